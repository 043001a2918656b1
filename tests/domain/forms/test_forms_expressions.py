"""The expression language: parsed, never evaluated by Python; unsupported syntax refused."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from crf_app.domain.forms import ExpressionError, parse_expression
from crf_app.domain.forms.expressions import infer_type, references


def ev(source: str, **env):
    return parse_expression(source).evaluate(
        {k: Decimal(str(v)) if isinstance(v, int | float) else v for k, v in env.items()})


@pytest.mark.parametrize(("source", "value"), [
    ("1 + 2 * 3", Decimal(7)),
    ("(1 + 2) * 3", Decimal(9)),
    ("10 - 4 - 3", Decimal(3)),
    ("24 / 4 / 2", Decimal(3)),
    ("-2 * 3", Decimal(-6)),
    ("- -2", Decimal(2)),
    ("2 * 3 > 5", True),
    ("1 + 1 == 2 and 3 < 2", False),
    ("1 == 1 or 1 == 2 and 1 == 3", True),  # and binds tighter than or
    ("(1 == 1 or 1 == 2) and 1 == 3", False),
    ("not 1 == 2", True),
    ("not 1 == 1 or 1 == 1", True),  # not binds tighter than or
    ('"b" in ("a", "b")', True),
    ('"c" in ("a", "b")', False),
    ('"c" not in ("a", "b")', True),
    ("3 in (1, 2, 1 + 2)", True),
    ("round(2.345, 2)", Decimal("2.35")),
    ("round(2.5)", Decimal(3)),
    ("min(3, 1, 2)", Decimal(1)),
    ("max(3, 1, 2)", Decimal(3)),
    ("sum(1, 2, 3)", Decimal(6)),
    ("count(1, 2)", Decimal(2)),
    ('if(1 < 2, "yes", "no")', "yes"),
    ("1 / 0", None),
    ('"say \\"hi\\"" == \'say "hi"\'', True),
    ("'single' == \"single\"", True),
])
def test_values_and_precedence(source, value):
    assert ev(source) == value


def test_item_references_and_missing_values():
    assert ev("A + B", A=1, B=2) == 3
    assert ev("A + B", A=1) is None  # arithmetic with an empty operand is empty
    assert ev("sum(A, B, C)", A=1, C=5) == 6  # sum ignores empties
    assert ev("sum(A, B)") is None
    assert ev("count(A, B, C)", A=1, C="x") == 2
    assert ev("A > 1", A=None) is None  # comparison with an empty value: unknown
    assert ev("A == B") is None
    assert ev('A in ("x")') is None
    assert ev("is_empty(A)") is True and ev("is_empty(A)", A=0) is False
    assert ev("min(A, 30)") is None and ev("max(A, 3)", A=4) == 4
    assert ev("round(A, 1)") is None
    assert ev('if(A == "Y", 1, 0)') is None


def test_kleene_logic():
    assert ev("A > 1 and 1 == 2") is False  # false decides an and
    assert ev("A > 1 and 1 == 1") is None
    assert ev("A > 1 or 1 == 1") is True   # true decides an or
    assert ev("A > 1 or 1 == 2") is None
    assert ev("not A > 1") is None


def test_dates_and_multi_choice():
    assert ev("A <= B", A=date(2026, 1, 1), B=date(2026, 2, 1)) is True
    assert ev('contains(R, "X")', R=("X", "Y")) is True
    assert ev('contains(R, "Z")', R=("X",)) is False
    assert ev('contains(R, "Z")', R=()) is None


def test_references_in_order_of_first_use():
    assert references('B + A * B > sum(C, A) and D in ("x", E)') == ("B", "A", "C", "D", "E")
    assert parse_expression("1 + 2").references == ()


@pytest.mark.parametrize(("source", "expected"), [
    ("A.b", "attribute access ('.') is not supported"),
    ("A.__class__", "attribute access"),
    ("__import__('os')", "unknown function '__import__'"),
    ("__import__", "unknown name '__import__'"),
    ("lambda: 1", "':' is not supported"),
    ("lambda x", "'lambda' is not supported"),
    ("A[0]", "subscripts ('[...]') are not supported"),
    ("open('f')", "'open' is not supported"),
    ("exec('1')", "'exec' is not supported"),
    ("foo(1)", "unknown function 'foo'"),
    ("system(1)", "unknown function 'system'"),
    ("sum", "sum is a function"),
    ("sex == 'F'", "unknown name 'sex'"),
    ("A = 1", "use '=='"),
    ("2 ** 3", "powers ('**') are not supported"),
    ("A ^ 2", "powers are not supported"),
    ("7 // 2", "'//' is not supported"),
    ("A % 2", "'%' is not supported"),
    ("A; B", "only one expression"),
    ("{1: 2}", "braces"),
    ("A && B", "use 'and'"),
    ("1 < A < 3", "chained comparisons are not supported"),
    ("(1 + 2", "expected ')'"),
    ("1 +", "expected a value"),
    ("1 2", "unexpected '2'"),
    ("'open", "text in quotes is not closed"),
    ("1e5", "malformed number"),
    ("", "expression is empty"),
    ("round(1, 2, 3)", "round() takes 1 to 2 argument(s), not 3"),
    ("is_empty()", "is_empty() takes 1 argument(s), not 0"),
    ("A if B else C", "unexpected 'if'"),
    ("if > 1", "if is a function"),
    ("True", "'True' is not supported"),
    ("x == 'ü' or A", "unknown name 'x'"),
    ("Aé", "unexpected character 'é'"),
])
def test_unsupported_syntax_is_refused_clearly(source, expected):
    with pytest.raises(ExpressionError) as exc:
        parse_expression(source)
    assert expected in str(exc.value)


def test_deep_nesting_and_long_input_are_refused_not_crashing():
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse_expression("(" * 500 + "1" + ")" * 500)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse_expression("not " * 500 + "A")
    with pytest.raises(ExpressionError, match="longer than"):
        parse_expression("1 + " * 2000 + "1")


TYPES = {"N": "number", "T": "text", "D": "date", "L": "list of codes"}


@pytest.mark.parametrize(("source", "expected"), [
    ("N + 1", "number"),
    ('T == "x"', "yes/no condition"),
    ('contains(L, "x")', "yes/no condition"),
    ("D < D", "yes/no condition"),
    ("min(D, D)", "date"),
    ('if(N > 1, "a", T)', "text"),
])
def test_static_types(source, expected):
    assert infer_type(parse_expression(source).node, TYPES) == expected


@pytest.mark.parametrize(("source", "expected"), [
    ("T + 1", "'+' needs a number, not a text"),
    ("N == T", "cannot compare a number with a text"),
    ("N and T == 'x'", "'and' needs a yes/no condition, not a number"),
    ("L < L", "cannot be compared with '<'"),
    ("round(N, N)", "round(x, n) needs n to be a whole number"),
    ("round(N, 1.5)", "round(x, n) needs n to be a whole number"),
    ("if(N, 1, 2)", "the condition of if() needs a yes/no condition"),
    ("if(N > 1, 1, T)", "if() must give the same type either way"),
    ("sum(T)", "sum() needs a number"),
    ("N in (T)", "'in' compares a number with a text"),
    ("contains(T, 'x')", "contains() needs a list of codes"),
    ("Q + 1", "unknown item 'Q'"),
])
def test_type_errors(source, expected):
    with pytest.raises(ExpressionError) as exc:
        infer_type(parse_expression(source).node, TYPES)
    assert expected in str(exc.value)
