"""Property tests: the engine never crashes on any input, and whatever it accepts satisfies the
item's rules and is a fixed point (re-validating a canonical value gives the same value)."""

from __future__ import annotations

import re
from datetime import date, datetime, time
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crf_app.domain.forms import (
    FormDef,
    ItemDef,
    decode_value,
    display_value,
    load_form_library,
    validate_form,
    validate_item,
)
from crf_app.paths import FORMS_DIR

LIB = load_form_library(FORMS_DIR)
ITEMS = [(form.id, item) for form in LIB.forms.values() for item in form.items
         if not item.is_computed]
ITEM_IDS = [f"{fid}.{item.id}" for fid, item in ITEMS]

# An extra form covering every type, so each one is exercised even if the CRF set changes.
EVERY_TYPE = FormDef.from_dict({"id": "every_type", "version": 1, "title": "Every type",
                                "sections": [{"id": "s", "title": "S", "items": [
    {"id": "TXT", "label": "Text", "type": "text", "max_length": 12},
    {"id": "INT", "label": "Integer", "type": "integer", "hard": {"min": -50, "max": 50},
     "soft": {"min": -10, "max": 10}},
    {"id": "DEC", "label": "Decimal", "type": "decimal", "precision": 2,
     "hard": {"min": -5.5, "max": 99.99}},
    {"id": "DEC0", "label": "Decimal 0", "type": "decimal", "precision": 0},
    {"id": "DAT", "label": "Date", "type": "date"},
    {"id": "PDT", "label": "Partial date", "type": "partial_date"},
    {"id": "TIM", "label": "Time", "type": "time"},
    {"id": "DTM", "label": "Datetime", "type": "datetime"},
    {"id": "CHO", "label": "Choice", "type": "choice",
     "codelist": [{"code": "a", "label": "A"}, {"code": "B", "label": "B"},
                  {"code": "1", "label": "One"}]},
    {"id": "MUL", "label": "Multi", "type": "multi_choice",
     "codelist": [{"code": "X", "label": "X"}, {"code": "Y", "label": "Y"},
                  {"code": "Z", "label": "Z"}]},
    {"id": "YN", "label": "Yes/no", "type": "yes_no"},
]}]})
ALL_ITEMS = [*ITEMS, *(("every_type", it) for it in EVERY_TYPE.items)]
ALL_IDS = [f"{fid}.{item.id}" for fid, item in ALL_ITEMS]


def near_values(item: ItemDef) -> st.SearchStrategy:
    """Inputs of the item's own type: mostly accepted, some just outside its rules."""
    t = item.type
    if t in ("integer", "decimal"):
        lo, hi = item.bounds[0], item.bounds[1]
        lo = (lo - 10) if lo is not None else Decimal(-10**6)
        hi = (hi + 10) if hi is not None else Decimal(10**6)
        places = (item.precision or 0) if t == "decimal" else 0
        return st.one_of(
            st.decimals(min_value=lo, max_value=hi, places=places).map(str),
            st.decimals(min_value=lo, max_value=hi, places=places + 1).map(str),
            st.integers(int(lo), int(hi)).map(lambda n: f" {n} "))
    if t in ("date", "partial_date"):
        days = st.dates(date(1890, 1, 1), date(2110, 12, 31)).map(date.isoformat)
        return st.one_of(days, days.map(lambda d: d[:7]), days.map(lambda d: d[:4]),
                         st.from_regex(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", fullmatch=True))
    if t == "time":
        return st.one_of(st.times().map(lambda v: v.strftime("%H:%M")),
                         st.from_regex(r"[0-2]?[0-9]:[0-6][0-9]", fullmatch=True))
    if t == "datetime":
        return st.datetimes(datetime(1890, 1, 1), datetime(2110, 1, 1)).map(
            lambda d: d.strftime("%Y-%m-%dT%H:%M") if d.second % 2 else
            d.strftime("%Y-%m-%d %H:%M"))
    if t == "text":
        return st.text(max_size=item.text_limit + 5)
    codes = [c.code for c in item.codes]
    if t == "multi_choice":
        return st.one_of(st.lists(st.sampled_from(codes), max_size=5),
                         st.lists(st.sampled_from(codes)).map("|".join))
    return st.one_of(st.sampled_from(codes), st.sampled_from(codes).map(str.lower),
                     st.sampled_from(["yes", "No", " y ", "0", "Z"]))


ANYTHING = st.one_of(
    st.none(), st.text(max_size=30), st.integers(), st.floats(),
    st.lists(st.text(max_size=5), max_size=4), st.booleans(),
    st.from_regex(r"[ 0-9.,:T|+-]{0,14}", fullmatch=True),
    st.decimals(allow_nan=True, allow_infinity=True),
)


def assert_rules_hold(item: ItemDef, value: str) -> None:
    hmin, hmax, _, _ = item.bounds
    t = item.type
    if t in ("integer", "decimal"):
        number = Decimal(value)
        assert hmin is None or number >= hmin
        assert hmax is None or number <= hmax
        if t == "integer":
            assert re.fullmatch(r"-?[0-9]+", value) and str(int(value)) == value
        else:
            places = item.precision or 0
            pattern = r"-?[0-9]+" + (rf"\.[0-9]{{{places}}}" if places else "")
            assert re.fullmatch(pattern, value), value
    elif t == "date":
        assert date.fromisoformat(value).isoformat() == value
    elif t == "partial_date":
        assert re.fullmatch(r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?", value)
        if len(value) == 10:
            date.fromisoformat(value)
    elif t == "time":
        assert time.fromisoformat(value).strftime("%H:%M") == value
    elif t == "datetime":
        assert datetime.fromisoformat(value).strftime("%Y-%m-%dT%H:%M") == value
    elif t in ("choice", "yes_no"):
        assert value in [c.code for c in item.codes]
    elif t == "multi_choice":
        chosen = value.split("|")
        order = [c.code for c in item.codes]
        assert all(c in order for c in chosen)
        assert chosen == sorted(set(chosen), key=order.index)
    else:
        assert value == value.strip() and 0 < len(value) <= item.text_limit
    decode_value(item, value)
    display_value(item, value)


def check_item(item: ItemDef, raw) -> None:
    result = validate_item(item, raw)
    assert (result.value is None) or not result.errors
    for issue in result.errors + result.warnings:
        assert issue.item_id == item.id and issue.message.startswith(item.label)
    if result.value is not None:
        assert_rules_hold(item, result.value)
        again = validate_item(item, result.value)
        assert again.value == result.value and again.ok
        assert [w.rule for w in again.warnings] == [w.rule for w in result.warnings]


@pytest.mark.parametrize(("form_id", "item"), ALL_ITEMS, ids=ALL_IDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_input_to_any_item_never_crashes_and_acceptance_is_sound(form_id, item, data):
    check_item(item, data.draw(ANYTHING, label="anything"))
    check_item(item, data.draw(near_values(item), label="near"))


def raw_entries(form: FormDef) -> st.SearchStrategy:
    plain = {i.id: st.one_of(near_values(i), near_values(i), ANYTHING)
             for i in form.plan.plain_order}
    entry = st.fixed_dictionaries({}, optional=plain)
    for section, order, _ in form.plan.repeating:
        row = st.fixed_dictionaries({}, optional={i.id: st.one_of(near_values(i), ANYTHING)
                                                  for i in order if not i.is_computed})
        entry = st.tuples(entry, st.lists(row, max_size=4)).map(
            lambda pair, sid=section.id: {**pair[0], sid: pair[1]})
    return entry


FORMS = [*LIB.forms.values(), EVERY_TYPE]


@pytest.mark.parametrize("form", FORMS, ids=[f.id for f in FORMS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_entry_to_any_form_is_a_fixed_point(form, data):
    raw = data.draw(raw_entries(form))
    for complete in (False, True):
        result = validate_form(form, raw, complete=complete)
        again = validate_form(form, result.values, complete=False)
        assert again.values == result.values
        assert again.computed == result.computed
        assert again.hidden == result.hidden
        parse_rules = {"not_a_number", "too_many_decimals", "bad_date", "bad_time",
                       "bad_datetime", "not_in_codelist", "max_length", "hard_min",
                       "hard_max", "bad_text", "bad_value", "too_large", "unknown_item"}
        assert not [e for e in again.errors if e.rule in parse_rules]
        for key, value in result.values.items():
            if isinstance(value, str):
                assert_rules_hold(form.item(key), value)
                assert key not in result.hidden
            else:
                for row in value:
                    for item_id, cell in row.items():
                        assert_rules_hold(form.item(item_id), cell)
