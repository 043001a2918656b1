"""The syntax of form expressions: a tokenizer and a recursive-descent parser (never eval/exec).

Grammar (lowest precedence first)::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := sum [("==" | "!=" | "<" | "<=" | ">" | ">=") sum
                    | ["not"] "in" "(" expr ("," expr)* ")"]
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := ("-" | "+") unary | atom
    atom    := NUMBER | STRING | ITEM_ID | FUNCTION "(" [expr ("," expr)*] ")" | "(" expr ")"

A parsed expression is a tree of tuples: ("num", Decimal), ("str", str), ("ref", item_id),
("not", x), ("and"|"or", (x, ...)), ("cmp", op, a, b), ("in", x, (option, ...), negated),
("arith", op, a, b), ("neg", x), ("call", name, (arg, ...)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from crf_app.domain.errors import ProtocolError

MAX_LENGTH = 4000
MAX_DEPTH = 60
ITEM_ID = re.compile(r"[A-Z][A-Z0-9_]*")
FUNCTIONS: dict[str, tuple[int, int | None]] = {  # name -> (min args, max args)
    "sum": (1, None), "count": (1, None), "min": (1, None), "max": (1, None),
    "round": (1, 2), "is_empty": (1, 1), "if": (3, 3), "contains": (2, 2),
}
KEYWORDS = frozenset({"and", "or", "not", "in"})
_PY_WORDS = frozenset({
    "lambda", "import", "from", "def", "class", "for", "while", "is", "yield", "await", "async",
    "return", "del", "global", "nonlocal", "with", "as", "try", "except", "raise", "assert",
    "pass", "else", "elif", "None", "True", "False", "print", "exec", "eval", "open"})
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TWO = ("==", "!=", "<=", ">=")
_ONE = "<>+-*/(),"
_REFUSED = {
    ".": "attribute access ('.') is not supported",
    "[": "subscripts ('[...]') are not supported",
    "]": "subscripts ('[...]') are not supported",
    "{": "braces ('{...}') are not supported",
    "}": "braces ('{...}') are not supported",
    ":": "':' is not supported (no lambdas, slices or dictionaries)",
    "=": "use '==' to compare values ('=' alone is not allowed)",
    "!": "use 'not' instead of '!'",
    "&": "use 'and' instead of '&'",
    "|": "use 'or' instead of '|'",
    "%": "'%' is not supported",
    "^": "powers are not supported; multiply instead",
    "@": "'@' is not supported",
    ";": "only one expression is allowed (no ';')",
}


class ExpressionError(ProtocolError):
    """An expression that cannot be parsed or is not allowed."""


def _fail(source: str, pos: int, message: str) -> ExpressionError:
    return ExpressionError(f"{message} (at column {pos + 1} of {source!r})")


# --- tokenizer ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # num, str, name, op, end
    text: str
    pos: int
    value: Any = None


def _tokenize(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c.isdigit():
            m = _NUMBER.match(src, i)
            if m is None or (m.end() < n and (src[m.end()].isalnum() or src[m.end()] in "._")):
                raise _fail(src, i, "malformed number (write numbers like 12 or 37.5)")
            toks.append(_Tok("num", m.group(), i, Decimal(m.group())))
            i = m.end()
        elif c in "\"'":
            j, chars = i + 1, []
            while j < n and src[j] != c:
                if src[j] == "\\" and j + 1 < n and src[j + 1] in "\\\"'":
                    j += 1
                chars.append(src[j])
                j += 1
            if j >= n:
                raise _fail(src, i, "text in quotes is not closed")
            toks.append(_Tok("str", src[i:j + 1], i, "".join(chars)))
            i = j + 1
        elif c.isalpha() or c == "_":
            m = _NAME.match(src, i)
            if m is None:
                raise _fail(src, i, f"unexpected character {c!r}")
            toks.append(_Tok("name", m.group(), i))
            i = m.end()
        elif src.startswith("**", i):
            raise _fail(src, i, "powers ('**') are not supported; multiply instead")
        elif src.startswith("//", i):
            raise _fail(src, i, "'//' is not supported; use round(a / b)")
        elif src[i:i + 2] in _TWO:
            toks.append(_Tok("op", src[i:i + 2], i))
            i += 2
        elif c in _ONE:
            toks.append(_Tok("op", c, i))
            i += 1
        else:
            raise _fail(src, i, _REFUSED.get(c, f"unexpected character {c!r}"))
    toks.append(_Tok("end", "", n))
    return toks


# --- parser: nodes are tuples (kind, ...) ------------------------------------------------------
class Parser:
    def __init__(self, src: str):
        self.src = src
        self.toks = _tokenize(src)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def is_op(self, text: str) -> bool:
        t = self.toks[self.i]
        return t.kind == "op" and t.text == text

    def is_word(self, text: str) -> bool:
        t = self.toks[self.i]
        return t.kind == "name" and t.text == text

    def expect(self, text: str) -> None:
        if not self.is_op(text):
            tok = self.peek()
            found = "the end of the expression" if tok.kind == "end" else repr(tok.text)
            raise _fail(self.src, tok.pos, f"expected {text!r} but found {found}")
        self.i += 1

    def parse(self) -> tuple:
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise _fail(self.src, tok.pos, f"unexpected {tok.text!r} after a complete expression")
        return node

    def expr(self) -> tuple:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _fail(self.src, self.peek().pos, "expression is nested too deeply")
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> tuple:
        parts = [self.and_()]
        while self.is_word("or"):
            self.i += 1
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else ("or", tuple(parts))

    def and_(self) -> tuple:
        parts = [self.not_()]
        while self.is_word("and"):
            self.i += 1
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else ("and", tuple(parts))

    def not_(self) -> tuple:
        if self.is_word("not"):
            self.i += 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _fail(self.src, self.peek().pos, "expression is nested too deeply")
            try:
                return ("not", self.not_())
            finally:
                self.depth -= 1
        return self.compare()

    def compare(self) -> tuple:
        left = self.sum_()
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("==", "!=", "<", "<=", ">", ">="):
            self.i += 1
            node: tuple = ("cmp", tok.text, left, self.sum_())
        elif self.is_word("in") or (self.is_word("not") and self.toks[self.i + 1].text == "in"):
            negated = self.take().text == "not"
            if negated:
                self.i += 1
            self.expect("(")
            options = [self.expr()]
            while self.is_op(","):
                self.i += 1
                options.append(self.expr())
            self.expect(")")
            node = ("in", left, tuple(options), negated)
        else:
            return left
        nxt = self.peek()
        if (nxt.kind == "op" and nxt.text in ("==", "!=", "<", "<=", ">", ">=")) \
                or self.is_word("in"):
            raise _fail(self.src, nxt.pos, "chained comparisons are not supported; use 'and'")
        return node

    def sum_(self) -> tuple:
        node = self.product()
        while self.is_op("+") or self.is_op("-"):
            op = self.take().text
            node = ("arith", op, node, self.product())
        return node

    def product(self) -> tuple:
        node = self.unary()
        while self.is_op("*") or self.is_op("/"):
            op = self.take().text
            node = ("arith", op, node, self.unary())
        return node

    def unary(self) -> tuple:
        if self.is_op("-") or self.is_op("+"):
            op = self.take().text
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _fail(self.src, self.peek().pos, "expression is nested too deeply")
            try:
                inner = self.unary()
            finally:
                self.depth -= 1
            return ("neg", inner) if op == "-" else inner
        return self.atom()

    def atom(self) -> tuple:
        tok = self.take()
        if tok.kind == "num":
            return ("num", tok.value)
        if tok.kind == "str":
            return ("str", tok.value)
        if tok.kind == "op" and tok.text == "(":
            node = self.expr()
            self.expect(")")
            return node
        if tok.kind == "name":
            return self.name(tok)
        found = "the end of the expression" if tok.kind == "end" else repr(tok.text)
        raise _fail(self.src, tok.pos, f"expected a value but found {found}")

    def name(self, tok: _Tok) -> tuple:
        word = tok.text
        if word in KEYWORDS:
            raise _fail(self.src, tok.pos, f"expected a value but found {word!r}")
        if word in _PY_WORDS:
            raise _fail(self.src, tok.pos, f"{word!r} is not supported in form expressions")
        if self.is_op("("):
            if word not in FUNCTIONS:
                raise _fail(self.src, tok.pos, f"unknown function {word!r} (allowed: "
                            f"{', '.join(FUNCTIONS)})")
            self.i += 1
            args: list[tuple] = []
            if not self.is_op(")"):
                args.append(self.expr())
                while self.is_op(","):
                    self.i += 1
                    args.append(self.expr())
            self.expect(")")
            lo, hi = FUNCTIONS[word]
            if len(args) < lo or (hi is not None and len(args) > hi):
                want = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi else f"at least {lo}"
                raise _fail(self.src, tok.pos, f"{word}() takes {want} argument(s), "
                            f"not {len(args)}")
            return ("call", word, tuple(args))
        if word in FUNCTIONS:
            raise _fail(self.src, tok.pos, f"{word} is a function: write {word}(...)")
        if not ITEM_ID.fullmatch(word):
            raise _fail(self.src, tok.pos, f"unknown name {word!r} (item ids are upper case, "
                        "e.g. SYSBP)")
        return ("ref", word)


def collect_refs(node: tuple, out: list[str]) -> None:
    """Append every item id `node` refers to (once each, in order of first use) to `out`."""
    kind = node[0]
    if kind == "ref":
        if node[1] not in out:
            out.append(node[1])
    elif kind in ("and", "or"):
        for p in node[1]:
            collect_refs(p, out)
    elif kind in ("not", "neg"):
        collect_refs(node[1], out)
    elif kind in ("cmp", "arith"):
        collect_refs(node[2], out)
        collect_refs(node[3], out)
    elif kind == "in":
        collect_refs(node[1], out)
        for o in node[2]:
            collect_refs(o, out)
    elif kind == "call":
        for a in node[2]:
            collect_refs(a, out)
