"""The small expression language of show_if, compute and edit checks.

Parsed by `syntax` (a tokenizer and a recursive-descent parser, never eval/exec), type-checked
against the form's items, and compiled into plain Python closures, so evaluating on every
keystroke is cheap.

Item ids are upper case (``SYSBP``); functions are lower case: ``sum``, ``count``, ``min``,
``max``, ``round``, ``is_empty``, ``if(condition, then, else)`` and ``contains(MULTI, "CODE")``
(whether a multi_choice item has a code ticked).

Values an expression sees (``env`` maps item id to value; a missing or ``None`` entry is an
empty item): numbers are ``Decimal``; text, choice codes, yes_no ("Y"/"N") and partial dates are
``str``; dates, times and datetimes are ``date``/``time``/``datetime``; multi_choice is a tuple of
codes. Partial dates are compared as ISO text ("2024" < "2024-05" < "2024-05-10").

Empty values (three-valued logic): a comparison or ``in`` with an empty operand is *unknown*
(``None``); ``and``/``or``/``not`` follow Kleene logic (``False and unknown`` is False,
``True or unknown`` is True); arithmetic, ``min``, ``max``, ``round`` and ``if`` with an empty
operand they need are empty; ``sum`` ignores empties (empty only when every operand is);
``count`` counts non-empty operands; ``is_empty`` is never unknown; ``contains`` of an empty
multi_choice is unknown. The engine treats an unknown show_if as false (item hidden), an unknown
check as not failed, and an unknown compute as empty. Division by zero is empty.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Any

from crf_app.domain.forms.syntax import (
    FUNCTIONS,
    MAX_LENGTH,
    ExpressionError,
    Parser,
    collect_refs,
)

__all__ = ["FUNCTIONS", "Expression", "ExpressionError", "infer_type", "parse_expression",
           "references"]

# Static types an expression can have.
NUMBER, TEXT, BOOL, DATE, TIME, DATETIME, LIST = (
    "number", "text", "yes/no condition", "date", "time", "datetime", "list of codes")
ORDERABLE = frozenset({NUMBER, TEXT, DATE, TIME, DATETIME})


# --- static typing ----------------------------------------------------------------------------
def infer_type(node: tuple, types: Mapping[str, str]) -> str:
    """The static type of `node`; raises ExpressionError for a type-inconsistent expression."""
    kind = node[0]
    if kind == "num":
        return NUMBER
    if kind == "str":
        return TEXT
    if kind == "ref":
        if node[1] not in types:
            raise ExpressionError(f"refers to unknown item {node[1]!r}")
        return types[node[1]]
    if kind == "not":
        _want(infer_type(node[1], types), BOOL, "'not'")
        return BOOL
    if kind in ("and", "or"):
        for part in node[1]:
            _want(infer_type(part, types), BOOL, f"'{kind}'")
        return BOOL
    if kind == "cmp":
        a, b = infer_type(node[2], types), infer_type(node[3], types)
        if a != b:
            raise ExpressionError(f"cannot compare a {a} with a {b} using {node[1]!r}")
        if node[1] not in ("==", "!=") and a not in ORDERABLE:
            raise ExpressionError(f"a {a} cannot be compared with {node[1]!r}")
        return BOOL
    if kind == "in":
        a = infer_type(node[1], types)
        if a in (BOOL, LIST):
            raise ExpressionError(f"'in' needs a single value on its left, not a {a}")
        for opt in node[2]:
            b = infer_type(opt, types)
            if b != a:
                raise ExpressionError(f"'in' compares a {a} with a {b}")
        return BOOL
    if kind == "arith":
        for side in (node[2], node[3]):
            _want(infer_type(side, types), NUMBER, f"'{node[1]}'")
        return NUMBER
    if kind == "neg":
        _want(infer_type(node[1], types), NUMBER, "'-'")
        return NUMBER
    return _infer_call(node[1], node[2], types)


def _infer_call(name: str, args: tuple, types: Mapping[str, str]) -> str:
    got = [infer_type(a, types) for a in args]
    if name == "count":
        return NUMBER
    if name == "is_empty":
        return BOOL
    if name == "contains":
        _want(got[0], LIST, "the first argument of contains()")
        _want(got[1], TEXT, "the second argument of contains()")
        return BOOL
    if name == "if":
        _want(got[0], BOOL, "the condition of if()")
        if got[1] != got[2]:
            raise ExpressionError(f"if() must give the same type either way, not a {got[1]} "
                                  f"and a {got[2]}")
        return got[1]
    if name == "round":
        _want(got[0], NUMBER, "round()")
        if len(args) == 2:
            places = args[1]
            if places[0] != "num" or places[1] != places[1].to_integral_value() or places[1] > 10:
                raise ExpressionError("round(x, n) needs n to be a whole number 0 to 10")
        return NUMBER
    if name == "sum":
        for t in got:
            _want(t, NUMBER, "sum()")
        return NUMBER
    if any(t != got[0] for t in got) or got[0] not in ORDERABLE:  # min, max
        raise ExpressionError(f"{name}() needs values of one orderable type, not "
                              f"{', '.join(got)}")
    return got[0]


def _want(got: str, want: str, where: str) -> None:
    if got != want:
        raise ExpressionError(f"{where} needs a {want}, not a {got}")


# --- compilation to closures ------------------------------------------------------------------
Env = Mapping[str, Any]
Fn = Callable[[Env], Any]
_CMP = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}
_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _empty(v: Any) -> bool:
    return v is None or v == "" or v == ()


def _compile(node: tuple) -> Fn:
    kind = node[0]
    if kind in ("num", "str"):
        const = node[1]
        return lambda env: const
    if kind == "ref":
        name = node[1]
        return lambda env: env.get(name)
    if kind == "not":
        inner = _compile(node[1])

        def not_(env: Env) -> Any:
            v = inner(env)
            return None if v is None else not v
        return not_
    if kind in ("and", "or"):
        parts = [_compile(p) for p in node[1]]
        stop = kind == "or"  # the value that decides the result

        def logic(env: Env) -> Any:
            unknown = False
            for part in parts:
                v = part(env)
                if v is None:
                    unknown = True
                elif bool(v) is stop:
                    return stop
            return None if unknown else not stop
        return logic
    if kind == "cmp":
        return _binary(_CMP[node[1]], _compile(node[2]), _compile(node[3]))
    if kind == "arith":
        return _binary(_ARITH[node[1]], _compile(node[2]), _compile(node[3]))
    if kind == "neg":
        inner = _compile(node[1])

        def neg(env: Env) -> Any:
            v = inner(env)
            try:
                return None if v is None else -v
            except TypeError:
                return None
        return neg
    if kind == "in":
        left, options, negated = _compile(node[1]), [_compile(o) for o in node[2]], node[3]

        def in_(env: Env) -> Any:
            v = left(env)
            if v is None:
                return None
            unknown = False
            for opt in options:
                o = opt(env)
                if o is None:
                    unknown = True
                elif o == v:
                    return not negated
            return None if unknown else negated
        return in_
    return _compile_call(node[1], [_compile(a) for a in node[2]])


def _binary(op: Callable[[Any, Any], Any], fa: Fn, fb: Fn) -> Fn:
    def binary(env: Env) -> Any:
        a = fa(env)
        if a is None:
            return None
        b = fb(env)
        if b is None:
            return None
        try:
            return op(a, b)
        except (ArithmeticError, TypeError):
            return None
    return binary


def _compile_call(name: str, args: list[Fn]) -> Fn:
    if name == "sum":
        def sum_(env: Env) -> Any:
            present = [v for v in (a(env) for a in args) if v is not None]
            try:
                return sum(present, Decimal(0)) if present else None
            except (ArithmeticError, TypeError):
                return None
        return sum_
    if name == "count":
        return lambda env: Decimal(sum(1 for a in args if not _empty(a(env))))
    if name == "is_empty":
        arg = args[0]
        return lambda env: _empty(arg(env))
    if name == "contains":
        codes, code = args

        def contains(env: Env) -> Any:
            have, want = codes(env), code(env)
            if _empty(have) or want is None:
                return None
            return want in have if isinstance(have, tuple) else None
        return contains
    if name == "if":
        cond, then, other = args

        def if_(env: Env) -> Any:
            c = cond(env)
            return None if c is None else then(env) if c else other(env)
        return if_
    if name == "round":
        x, places = args[0], (args[1] if len(args) > 1 else (lambda env: Decimal(0)))

        def round_(env: Env) -> Any:
            v, n = x(env), places(env)
            if v is None or n is None:
                return None
            try:
                return v.quantize(Decimal(1).scaleb(-int(n)), rounding=ROUND_HALF_UP)
            except (ArithmeticError, TypeError, AttributeError, ValueError):
                return None
        return round_
    pick = min if name == "min" else max

    def extreme(env: Env) -> Any:
        values = [a(env) for a in args]
        if any(v is None for v in values):
            return None
        try:
            return pick(values)
        except TypeError:
            return None
    return extreme


@dataclass(frozen=True, eq=False)
class Expression:
    """A parsed expression: its source, the item ids it references, and a compiled evaluator."""

    source: str
    node: tuple = field(repr=False)
    references: tuple[str, ...]
    _fn: Fn = field(repr=False)

    def evaluate(self, env: Env) -> Any:
        """The value for item values `env` (None = empty or unknown). Never raises for data."""
        return self._fn(env)

    def result_type(self, types: Mapping[str, str]) -> str:
        """Static type given each referenced item's expression type; ExpressionError if bad."""
        return infer_type(self.node, types)


@lru_cache(maxsize=4096)
def parse_expression(source: str) -> Expression:
    """Parse and compile `source`; raise ExpressionError naming what is not allowed."""
    if not isinstance(source, str):
        raise ExpressionError("an expression must be text")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    if not source.strip():
        raise ExpressionError("expression is empty")
    node = Parser(source).parse()
    refs: list[str] = []
    collect_refs(node, refs)
    return Expression(source, node, tuple(refs), _compile(node))


def references(source: str) -> tuple[str, ...]:
    """The item ids an expression refers to, in order of first use."""
    return parse_expression(source).references
