"""Item types: parsing what a user typed into canonical storage strings, and back.

Canonical encodings (what the database stores): integer "12"; decimal with exactly its
precision ("37.5", "5.00"); date "YYYY-MM-DD"; partial_date "YYYY", "YYYY-MM" or "YYYY-MM-DD"
(ISO 8601 reduced precision); time "HH:MM" (24 h); datetime "YYYY-MM-DDTHH:MM"; choice the code;
multi_choice the codes joined by "|" in codelist order; yes_no "Y"/"N"; text stripped.

Input is lenient only where it cannot be ambiguous: whitespace is stripped, "7" is a time of
07:00 if typed "7:00", yes_no accepts y/n/yes/no, a choice code in the wrong case is matched if
unique, and a decimal may have trailing zeros beyond its precision. Decimals need a point: "37,5"
is refused with a message saying so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from crf_app.domain.forms.results import ItemIssue
from crf_app.domain.forms.schema import ItemDef

MAX_DIGITS = 15
YEAR_RANGE = (1900, 2100)
_INT = re.compile(r"[+-]?[0-9]+")
_DEC = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_PARTIAL = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?")
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_DATETIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{1,2}:[0-9]{2})")
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_YES = {"Y": "Y", "YES": "Y", "N": "N", "NO": "N"}

Parsed = tuple[str | None, Any, ItemIssue | None, ItemIssue | None]  # canonical, value, err, warn


class _Reject(Exception):
    def __init__(self, rule: str, message: str):
        self.rule, self.message = rule, message


def _q(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _with_unit(item: ItemDef, text: str) -> str:
    return f"{text} {item.unit}" if item.unit else text


def format_limit(item: ItemDef, value: Decimal) -> str:
    """A limit as shown in messages: whole for integer items, item precision for decimals."""
    if item.type == "decimal":
        return f"{value.quantize(Decimal(1).scaleb(-(item.precision or 0))):f}"
    return f"{value.normalize():f}"


# --- one parser per type: stripped non-empty text -> (canonical, expression value) ---------------
def _integer(item: ItemDef, s: str) -> tuple[str, Any]:
    if not _INT.fullmatch(s):
        m = _DEC.fullmatch(s)
        if m and s not in (".", "+.", "-.") and (m.group(2) or m.group(3)):
            raise _Reject("too_many_decimals", f"{s} must be a whole number (no decimals)")
        raise _Reject("not_a_number", f"{_q(s)} is not a whole number")
    if len(s.lstrip("+-").lstrip("0")) > MAX_DIGITS:
        raise _Reject("too_large", f"{_q(s)} has too many digits")
    n = int(s)
    return str(n), Decimal(n)


def _decimal(item: ItemDef, s: str) -> tuple[str, Any]:
    m = _DEC.fullmatch(s)
    if not m or not (m.group(2) or m.group(3)):
        if "," in s and _DEC.fullmatch(s.replace(",", ".", 1)):
            raise _Reject("not_a_number", f"{_q(s)} is not a number: use a point as the "
                          "decimal separator (37.5, not 37,5)")
        raise _Reject("not_a_number", f"{_q(s)} is not a number")
    whole, frac = m.group(2), (m.group(3) or "")
    places = item.precision or 0
    if len(frac.rstrip("0")) > places:
        rule = "too_many_decimals"
        if places == 0:
            raise _Reject(rule, f"{s} must be a whole number (no decimals)")
        raise _Reject(rule, f"{s} has more than {places} decimal place{'s' * (places > 1)}")
    if len(whole.lstrip("0")) > MAX_DIGITS:
        raise _Reject("too_large", f"{_q(s)} has too many digits")
    value = Decimal(f"{m.group(1)}{whole or '0'}.{frac.rstrip('0') or '0'}")
    value = abs(value) if value == 0 else value
    value = value.quantize(Decimal(1).scaleb(-places))
    return f"{value:f}", value


def _check_year(y: int, s: str) -> None:
    if not YEAR_RANGE[0] <= y <= YEAR_RANGE[1]:
        raise _Reject("bad_date", f"{s}: the year must be between {YEAR_RANGE[0]} and "
                      f"{YEAR_RANGE[1]}")


def _real_date(s: str, y: int, mo: int, d: int) -> date:
    _check_year(y, s)
    try:
        return date(y, mo, d)
    except ValueError:
        raise _Reject("bad_date", f"{s} is not a real calendar date") from None


def _date(item: ItemDef, s: str) -> tuple[str, Any]:
    m = _DATE.fullmatch(s)
    if not m:
        raise _Reject("bad_date", f"{_q(s)} is not a date; enter YYYY-MM-DD")
    d = _real_date(s, int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return d.isoformat(), d


def _partial_date(item: ItemDef, s: str) -> tuple[str, Any]:
    m = _PARTIAL.fullmatch(s)
    if not m:
        raise _Reject("bad_date", f"{_q(s)} is not a date; enter YYYY, YYYY-MM or YYYY-MM-DD")
    y = int(m.group(1))
    _check_year(y, s)
    if m.group(2) and not 1 <= int(m.group(2)) <= 12:
        raise _Reject("bad_date", f"{s} is not a real calendar date (month {m.group(2)})")
    if m.group(3):
        _real_date(s, y, int(m.group(2)), int(m.group(3)))
    return s, s


def _real_time(s: str, hh: str, mm: str, rule: str, what: str) -> time:
    h, mi = int(hh), int(mm)
    if h > 23 or mi > 59:
        raise _Reject(rule, f"{s} is not a valid {what}; the time must be 00:00 to 23:59")
    return time(h, mi)


def _time(item: ItemDef, s: str) -> tuple[str, Any]:
    m = _TIME.fullmatch(s)
    if not m:
        raise _Reject("bad_time", f"{_q(s)} is not a time; enter HH:MM (24-hour clock)")
    t = _real_time(s, m.group(1), m.group(2), "bad_time", "time")
    return t.strftime("%H:%M"), t


def _datetime(item: ItemDef, s: str) -> tuple[str, Any]:
    m = _DATETIME.fullmatch(s)
    if not m:
        raise _Reject("bad_datetime", f"{_q(s)} is not a date and time; enter "
                      "YYYY-MM-DDTHH:MM")
    dm = _DATE.fullmatch(m.group(1))
    tm = _TIME.fullmatch(m.group(2))
    assert dm and tm
    try:
        d = _real_date(s, int(dm.group(1)), int(dm.group(2)), int(dm.group(3)))
    except _Reject as exc:
        raise _Reject("bad_datetime", exc.message) from None
    t = _real_time(s, tm.group(1), tm.group(2), "bad_datetime", "date and time")
    dt = datetime.combine(d, t)
    return dt.strftime("%Y-%m-%dT%H:%M"), dt


def _code_of(item: ItemDef, s: str) -> str:
    codes = item.codes
    for c in codes:
        if c.code == s:
            return s
    folded = [c.code for c in codes if c.code.casefold() == s.casefold()]
    if len(folded) == 1:
        return folded[0]
    shown = ", ".join(c.code for c in codes[:12]) + (", …" if len(codes) > 12 else "")
    raise _Reject("not_in_codelist", f"{_q(s)} is not in the codelist ({shown})")


def _choice(item: ItemDef, s: str) -> tuple[str, Any]:
    code = _code_of(item, s)
    return code, code


def _multi_choice(item: ItemDef, s: str) -> tuple[str, Any]:
    chosen = {_code_of(item, part.strip()) for part in s.split("|") if part.strip()}
    ordered = tuple(c.code for c in item.codes if c.code in chosen)
    return "|".join(ordered), ordered


def _yes_no(item: ItemDef, s: str) -> tuple[str, Any]:
    code = _YES.get(s.upper())
    if code is None:
        raise _Reject("not_in_codelist", f"{_q(s)} is not Y (yes) or N (no)")
    return code, code


def _text(item: ItemDef, s: str) -> tuple[str, Any]:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _Reject("bad_text", "the text contains characters that cannot be stored") from None
    if _BAD_CHARS.search(s):
        raise _Reject("bad_text", "the text contains control characters")
    if len(s) > item.text_limit:
        raise _Reject("max_length", f"the text has {len(s)} characters; the maximum is "
                      f"{item.text_limit}")
    return s, s


PARSERS: dict[str, Callable[[ItemDef, str], tuple[str, Any]]] = {
    "integer": _integer, "decimal": _decimal, "date": _date, "partial_date": _partial_date,
    "time": _time, "datetime": _datetime, "choice": _choice, "multi_choice": _multi_choice,
    "yes_no": _yes_no, "text": _text,
}


def _as_text(item: ItemDef, raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw.strip()
    if isinstance(raw, bool):
        return "Y" if raw else "N"
    if isinstance(raw, int | Decimal):
        return str(raw)
    if isinstance(raw, float):
        return repr(raw)
    if isinstance(raw, list | tuple) and item.type == "multi_choice":
        parts = [_as_text(item, p) for p in raw]
        if any("|" in p for p in parts):
            raise _Reject("not_in_codelist", "a code cannot contain '|'")
        return "|".join(parts)
    if isinstance(raw, list | tuple):
        raise _Reject("bad_value", "expected one value, not a list")
    raise _Reject("bad_value", f"expected text, not a {type(raw).__name__}")


def parse_value(item: ItemDef, raw: Any, row: int | None = None) -> Parsed:
    """(canonical or None, expression value, error or None, warning or None) for `raw`."""
    try:
        s = _as_text(item, raw)
        if not s:
            return None, None, None, None
        canonical, value = PARSERS[item.type](item, s)
    except _Reject as exc:
        return None, None, ItemIssue(item.id, row, exc.rule, f"{item.label}: {exc.message}"), None
    if not canonical:
        return None, None, None, None
    if item.type in ("integer", "decimal"):
        return _limits(item, canonical, value, row)
    return canonical, value, None, None


def _limits(item: ItemDef, canonical: str, value: Decimal, row: int | None) -> Parsed:
    hmin, hmax, smin, smax = item.bounds
    label = item.label
    if hmin is not None and value < hmin:
        limit = _with_unit(item, format_limit(item, hmin))
        err = ItemIssue(item.id, row, "hard_min", f"{label}: {canonical} is below the minimum "
                        f"{limit}")
        return canonical, value, err, None
    if hmax is not None and value > hmax:
        limit = _with_unit(item, format_limit(item, hmax))
        err = ItemIssue(item.id, row, "hard_max", f"{label}: {canonical} is above the maximum "
                        f"{limit}")
        return canonical, value, err, None
    low = smin is not None and value < smin
    if low or (smax is not None and value > smax):
        assert item.soft is not None
        where = "below" if low else "above"
        shown = _with_unit(item, canonical)
        if item.soft.flag:
            text = f"{shown} is {where} the {item.soft.flag} ({soft_range_text(item)})"
        else:
            bound = format_limit(item, smin if low else smax)  # type: ignore[arg-type]
            text = (f"{shown} is {where} the expected {'minimum' if low else 'maximum'} "
                    f"{_with_unit(item, bound)}; please confirm")
        return canonical, value, None, ItemIssue(item.id, row, "soft_min" if low else "soft_max",
                                                 f"{label}: {text}")
    return canonical, value, None, None


def soft_range_text(item: ItemDef) -> str:
    """'3.9–7.8 mmol/L', '≤ 5.0 mg/L' or '≥ 1.00 mmol/L'."""
    _, _, lo, hi = item.bounds
    if lo is not None and hi is not None:
        return _with_unit(item, f"{format_limit(item, lo)}–{format_limit(item, hi)}")
    if hi is not None:
        return "≤ " + _with_unit(item, format_limit(item, hi))
    return "≥ " + _with_unit(item, format_limit(item, lo))  # type: ignore[arg-type]


def encode_computed(item: ItemDef, result: Any, row: int | None = None) -> Parsed:
    """Turn an expression result into the item's canonical value (rounding half up)."""
    if result is None or result == () or result == "":
        return None, None, None, None
    try:
        if isinstance(result, bool):
            text = ("Y" if result else "N") if item.type == "yes_no" else str(result)
        elif isinstance(result, Decimal):
            if not result.is_finite() or abs(result) >= Decimal(10) ** MAX_DIGITS:
                raise InvalidOperation
            places = (item.precision or 0) if item.type == "decimal" else 0
            text = f"{result.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):f}"
        elif isinstance(result, datetime):
            text = result.strftime("%Y-%m-%dT%H:%M")
        elif isinstance(result, time):
            text = result.strftime("%H:%M")
        elif isinstance(result, tuple):
            text = "|".join(result)
        else:
            text = result.isoformat() if isinstance(result, date) else str(result)
    except (ArithmeticError, TypeError, ValueError):
        return None, None, ItemIssue(item.id, row, "compute_failed",
                                     f"{item.label}: the computed value is out of range"), None
    return parse_value(item, text, row)


def decode_value(item: ItemDef, canonical: str | None) -> Any:
    """The typed value of a stored canonical string: int, Decimal, date, time, datetime,
    list[str] (multi_choice), bool (yes_no) or str (text, choice, partial_date); None if empty.
    Raises ValueError if `canonical` is not a valid value of the item."""
    canon, value, err, _ = parse_value(item, canonical)
    if err is not None and err.rule not in ("hard_min", "hard_max"):
        raise ValueError(err.message)
    if canon is None:
        return None
    t = item.type
    if t == "integer":
        return int(value)
    if t == "multi_choice":
        return list(value)
    if t == "yes_no":
        return value == "Y"
    return value


def display_value(item: ItemDef, canonical: str | None) -> str:
    """Human text: codes as labels, numbers with their unit, datetimes with a space."""
    if not canonical:
        return ""
    t = item.type
    if t in ("integer", "decimal"):
        return _with_unit(item, canonical)
    if t in ("choice", "yes_no"):
        return item.code_label(canonical) or canonical
    if t == "multi_choice":
        return "; ".join(item.code_label(c) or c for c in canonical.split("|"))
    if t == "datetime":
        return canonical.replace("T", " ")
    return canonical
