"""Dosing-log rules, quick daily entry, courses/washout and compliance."""

import time as clock
from dataclasses import replace
from datetime import date, time, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crf_app.domain.compliance import (
    MAX_INTERRUPTION_DAYS,
    compliance,
    course_compliance,
    courses,
)
from crf_app.domain.dosing import (
    GIVEN_BY,
    NOSTRILS,
    ROUTES,
    DoseContext,
    DoseInput,
    DoseRecord,
    day_findings,
    review_days,
    usual_day,
    validate_dose,
)
from crf_app.domain.protocol import RegimenDef

TODAY = date(2026, 6, 30)
D = date(2026, 3, 1)
BASE = DoseInput(date="2026-03-02", time="08:00", dose_mg="0.1", instillations="1",
                 nostril="LEFT", lot="L2026-01", given_by="SELF")
MISSED = DoseInput(date="2026-03-02", missed=True, missed_reason="Forgot")


@pytest.fixture(scope="module")
def stroke(protocol):
    return protocol.regimen("stroke-tbi")  # 0.1–0.3 mg, 2–4 a day, 7–14 days, max 1.2 mg


@pytest.fixture(scope="module")
def cyclic(protocol):
    return protocol.regimen("neurodegenerative-cyclic")  # 10–20 days, washout 30


def ctx(regimen, existing=(), **kw):
    base = dict(regimen=regimen, randomised=True, course_start=D, existing=list(existing),
                today=TODAY)
    base.update(kw)
    return DoseContext(**base)


def rec(day, n=1, dose="0.1", missed=False, at=time(8)):
    if missed:
        return DoseRecord(day, None, None, 0, "", "INTRANASAL", "", "", True, "Forgot")
    return DoseRecord(day, at, Decimal(dose), n, "LEFT", "INTRANASAL", "L1", "SELF")


def daily(first, days, n=1, dose="0.1"):
    return [rec(first + timedelta(days=i), n, dose) for i in range(days)]


def test_codelists(protocol):
    assert list(NOSTRILS) == ["LEFT", "RIGHT", "BOTH", "ALTERNATING"]
    assert list(ROUTES) == ["INTRANASAL"] and list(GIVEN_BY) == ["SELF", "STAFF"]


def test_valid_dose_is_typed(stroke):
    result = validate_dose(replace(BASE, dose_mg=" 0.250 ", nostril="both"), ctx(stroke))
    assert (result.errors, result.findings, result.warnings) == ([], [], [])
    assert result.value == DoseRecord(date(2026, 3, 2), time(8), Decimal("0.25"), 1, "BOTH",
                                      "INTRANASAL", "L2026-01", "SELF")
    assert result.value.total_mg == Decimal("0.25")


def test_valid_missed_dose_is_typed(stroke):
    result = validate_dose(replace(MISSED, time="08:00"), ctx(stroke))
    assert result.errors == [] and result.findings == [] and result.warnings == []
    assert result.value == DoseRecord(date(2026, 3, 2), time(8), None, 0, "", "INTRANASAL", "",
                                      "", True, "Forgot")
    assert result.value.total_mg == 0


# (base, tripping change, passing change, field, rule)
ERROR_RULES = [
    (BASE, dict(date=""), dict(date="2026-03-03"), "date", "required"),
    (BASE, dict(date="2026-02-30"), dict(date="2026-02-28"), "date", "date"),
    (BASE, dict(date="2026/03/02"), dict(date="2026-03-02"), "date", "date"),
    (BASE, dict(date="2026-07-01"), dict(date="2026-06-30"), "date", "not_future"),
    (BASE, dict(time=""), dict(time="07:45"), "time", "required"),
    (BASE, dict(time="25:00"), dict(time="23:00"), "time", "time"),
    (BASE, dict(time="8.30"), dict(time="8:30"), "time", "time"),
    (BASE, dict(dose_mg=""), dict(dose_mg="0.2"), "dose_mg", "required"),
    (BASE, dict(dose_mg="abc"), dict(dose_mg="0.2"), "dose_mg", "number"),
    (BASE, dict(dose_mg="0,1"), dict(dose_mg="0.1"), "dose_mg", "number"),
    (BASE, dict(dose_mg="1e-1"), dict(dose_mg=".1"), "dose_mg", "number"),
    (BASE, dict(dose_mg="NaN"), dict(dose_mg="0.1"), "dose_mg", "number"),
    (BASE, dict(dose_mg="0"), dict(dose_mg="0.1"), "dose_mg", "positive"),
    (BASE, dict(dose_mg="0.000"), dict(dose_mg="0.100"), "dose_mg", "positive"),
    (BASE, dict(dose_mg=".0"), dict(dose_mg=".1"), "dose_mg", "positive"),
    (BASE, dict(dose_mg="-0.1"), dict(dose_mg="0.1"), "dose_mg", "positive"),
    (BASE, dict(dose_mg="0.1234"), dict(dose_mg="0.1230"), "dose_mg", "decimals"),
    (BASE, dict(dose_mg="0.1001"), dict(dose_mg="0.101"), "dose_mg", "decimals"),
    (BASE, dict(instillations=""), dict(instillations="2"), "instillations", "required"),
    (BASE, dict(instillations="1.5"), dict(instillations="1"), "instillations", "integer"),
    (BASE, dict(instillations="two"), dict(instillations="2"), "instillations", "integer"),
    (BASE, dict(instillations="²"), dict(instillations="2"), "instillations", "integer"),
    (BASE, dict(instillations="0"), dict(instillations="01"), "instillations", "positive"),
    (BASE, dict(instillations="-1"), dict(instillations="1"), "instillations", "positive"),
    (BASE, dict(nostril=""), dict(nostril="RIGHT"), "nostril", "required"),
    (BASE, dict(nostril="UP"), dict(nostril="ALTERNATING"), "nostril", "codelist"),
    (BASE, dict(route=""), dict(route="intranasal"), "route", "required"),
    (BASE, dict(route="ORAL"), dict(route="INTRANASAL"), "route", "codelist"),
    (BASE, dict(lot=""), dict(lot="A1"), "lot", "required"),
    (BASE, dict(lot="L1\x07"), dict(lot="L1"), "lot", "control_characters"),
    (BASE, dict(lot="L" * 41), dict(lot="L" * 40), "lot", "too_long"),
    (BASE, dict(given_by=""), dict(given_by="STAFF"), "given_by", "required"),
    (BASE, dict(given_by="NURSE"), dict(given_by="staff"), "given_by", "codelist"),
    (BASE, dict(missed_reason="Forgot"), dict(missed_reason=""), "missed_reason", "not_missed"),
    (MISSED, dict(missed_reason=""), dict(missed_reason="Nasal congestion"), "missed_reason",
     "required"),
    (MISSED, dict(missed_reason="a\nb"), dict(missed_reason="a b"), "missed_reason",
     "control_characters"),
    (MISSED, dict(dose_mg="0.1"), dict(dose_mg=""), "dose_mg", "missed_with_dose"),
    (MISSED, dict(instillations="1"), dict(instillations=" "), "instillations",
     "missed_with_dose"),
    (MISSED, dict(nostril="LEFT"), dict(nostril=""), "nostril", "missed_with_dose"),
    (MISSED, dict(lot="L1"), dict(lot=""), "lot", "missed_with_dose"),
    (MISSED, dict(given_by="SELF"), dict(given_by=""), "given_by", "missed_with_dose"),
    (MISSED, dict(time="24:00"), dict(time=""), "time", "time"),
    (MISSED, dict(route="NASAL"), dict(route=""), "route", "codelist"),
]


@pytest.mark.parametrize("base, trip, ok, field, rule", ERROR_RULES,
                         ids=[f"{f}-{r}-{i}" for i, (_, _, _, f, r) in enumerate(ERROR_RULES)])
def test_each_error_rule_trips_and_its_neighbour_passes(stroke, base, trip, ok, field, rule):
    tripped = validate_dose(replace(base, **trip), ctx(stroke))
    assert [(e.field, e.rule) for e in tripped.errors] == [(field, rule)]
    assert tripped.value is None and tripped.errors[0].message
    passed = validate_dose(replace(base, **ok), ctx(stroke))
    assert passed.errors == [] and passed.value is not None


@pytest.mark.parametrize("dose, n, refused", [
    ("1001", "1", [("dose_mg", "hard_limit")]), ("1000", "1", []),
    ("0.1", "100", [("instillations", "hard_limit")]), ("0.1", "99", [])])
def test_hard_limits(stroke, dose, n, refused):
    result = validate_dose(replace(BASE, dose_mg=dose, instillations=n), ctx(stroke))
    assert [(e.field, e.rule) for e in result.errors] == refused
    assert (result.value is None) == bool(refused)


@pytest.mark.parametrize("raw", [BASE, MISSED])
def test_never_randomised_is_refused(stroke, raw):
    result = validate_dose(raw, ctx(stroke, randomised=False))
    assert [(e.field, e.rule) for e in result.errors] == [("subject", "not_randomised")]
    assert validate_dose(raw, ctx(stroke)).errors == []


def test_late_dose_warns_but_saves(stroke):
    late = validate_dose(replace(BASE, time="18:01"), ctx(stroke))
    assert late.value is not None and [w.rule for w in late.warnings] == ["late_dose"]
    assert validate_dose(replace(BASE, time="18:00"), ctx(stroke)).warnings == []
    assert validate_dose(replace(MISSED, time="21:00"), ctx(stroke)).warnings == []


def _rules(check):
    assert check.value is not None and check.errors == []
    return [(f.field, f.rule) for f in check.findings]


def test_dose_per_instillation_outside_range(stroke):
    for dose, found in [("0.09", True), ("0.1", False), ("0.3", False), ("0.301", True)]:
        assert _rules(validate_dose(replace(BASE, dose_mg=dose), ctx(stroke))) == \
            ([("dose_mg", "dose_range")] if found else [])


def test_daily_total_above_daily_max(stroke):
    tight = RegimenDef(id="tight", indication="t", dose_mg_per_instillation={"min": 0.1,
                       "max": 0.3}, instillations_per_day={"min": 2, "max": 4},
                       course_days={"min": 7, "max": 14}, max_daily_mg=0.8)
    day = date(2026, 3, 2)
    existing = [rec(day, 2, "0.3"), rec(day - timedelta(days=1), 3, "0.3")]
    over = validate_dose(replace(BASE, dose_mg="0.3"), ctx(tight, existing))
    assert _rules(over) == [("dose_mg", "daily_max")] and "0.9 mg" in over.findings[0].message
    assert _rules(validate_dose(replace(BASE, dose_mg="0.2"), ctx(tight, existing))) == []
    # without max_daily_mg the maximum is 0.3 mg × 4 = 1.2 mg
    full = [rec(day, 3, "0.3")]
    assert _rules(validate_dose(replace(BASE, dose_mg="0.3"), ctx(stroke, full))) == []


def test_instillations_above_the_daily_maximum(stroke):
    day = date(2026, 3, 2)
    existing = [rec(day, 2), rec(day - timedelta(days=1), 4), rec(day, 0, missed=True)]
    assert _rules(validate_dose(replace(BASE, instillations="3"), ctx(stroke, existing))) == \
        [("instillations", "instillations_above_max")]
    assert _rules(validate_dose(replace(BASE, instillations="2"), ctx(stroke, existing))) == []


def test_course_longer_than_the_maximum(stroke):
    existing = daily(D, 14)  # 1–14 March
    assert _rules(validate_dose(replace(BASE, date="2026-03-15"), ctx(stroke, existing))) == \
        [("date", "course_too_long")]
    assert _rules(validate_dose(replace(BASE, date="2026-03-14"), ctx(stroke, existing))) == []
    # one course for a non-cyclic regimen: a pause does not start a new one
    assert _rules(validate_dose(replace(BASE, date="2026-04-20"), ctx(stroke, existing))) == \
        [("date", "course_too_long")]


def test_dose_before_the_course_start(stroke):
    assert _rules(validate_dose(replace(BASE, date="2026-02-28"), ctx(stroke))) == \
        [("date", "before_course_start")]
    assert _rules(validate_dose(replace(BASE, date="2026-03-01"), ctx(stroke))) == []
    assert _rules(validate_dose(replace(BASE, date="2026-02-28"),
                                ctx(stroke, course_start=None))) == []


def test_washout_of_a_cyclic_regimen(cyclic, stroke):
    existing = daily(D, 10)  # course 1–10 March
    for day, found in [("2026-03-13", False),  # 2 dose-free days: an interruption
                       ("2026-03-14", True),  # 3 dose-free days: a new course, in washout
                       ("2026-04-09", True),  # 29 dose-free days
                       ("2026-04-10", False)]:  # 30 dose-free days
        check = validate_dose(replace(BASE, date=day), ctx(cyclic, existing))
        assert _rules(check) == ([("date", "washout")] if found else []), day
    # the same doses under a regimen without cycles: no washout
    assert _rules(validate_dose(replace(BASE, date="2026-03-14"), ctx(stroke, existing))) == []
    # a missed dose is not dosing in the washout
    assert validate_dose(replace(MISSED, date="2026-03-20"), ctx(cyclic, existing)).findings \
        == []


def test_a_dose_that_shortens_the_washout_before_the_next_course(cyclic):
    existing = daily(D, 10) + daily(date(2026, 5, 1), 10)
    found = validate_dose(replace(BASE, date="2026-04-15"), ctx(cyclic, existing))
    assert _rules(found) == [("date", "washout")]
    assert "2026-05-01" in found.findings[0].message
    later = daily(D, 10) + daily(date(2026, 5, 20), 10)  # 34 dose-free days after 15 April
    assert _rules(validate_dose(replace(BASE, date="2026-04-15"), ctx(cyclic, later))) == []


def test_course_length_counts_from_the_current_cyclic_course(cyclic):
    existing = daily(D, 20) + daily(date(2026, 4, 21), 20)  # two 20-day courses
    assert _rules(validate_dose(replace(BASE, date="2026-05-10"), ctx(cyclic, existing))) == []
    assert _rules(validate_dose(replace(BASE, date="2026-05-11"), ctx(cyclic, existing))) == \
        [("date", "course_too_long")]


def test_day_level_review_judges_completed_days(stroke):
    day = date(2026, 3, 2)
    assert [f.rule for f in day_findings([rec(day)], stroke)] == ["instillations_below_min"]
    assert day_findings([rec(day)], stroke, complete=False) == []
    assert day_findings([rec(day), rec(day)], stroke) == []
    assert [f.rule for f in day_findings([rec(day, 5, "0.3")], stroke)] == [
        "daily_max", "instillations_above_max"]
    records = [rec(D, 2), rec(D + timedelta(days=1), 1), rec(D + timedelta(days=3), 2),
               rec(D + timedelta(days=3), 0, missed=True)]
    review = review_days(records, stroke, D, D + timedelta(days=3))
    assert {d: [f.rule for f in fs] for d, fs in review.items()} == {
        D + timedelta(days=1): ["instillations_below_min"],
        D + timedelta(days=2): ["instillations_below_min"]}


@pytest.mark.parametrize("start", [time(6), time(8), time(9, 7), time(13, 30), time(15),
                                   time(18)])
def test_usual_day_is_valid_and_never_after_18(protocol, start):
    for regimen in protocol.regimens:
        inputs = usual_day(regimen, D, start, lot="L7")
        assert len(inputs) == regimen.instillations_per_day.min
        times = [time.fromisoformat(i.time) for i in inputs]
        assert times[0] == start.replace(second=0) and times == sorted(times)
        assert all(t <= time(18) for t in times)
        existing: list[DoseRecord] = []
        for raw in inputs:
            check = validate_dose(raw, ctx(regimen, existing))
            assert (check.errors, check.findings, check.warnings) == ([], [], [])
            existing.append(check.value)
        assert day_findings(existing, regimen) == []


def test_usual_day_spacing(stroke):
    assert [i.time for i in usual_day(stroke, D, time(8))] == ["08:00", "12:00"]
    assert [i.nostril for i in usual_day(stroke, D, time(8))] == ["LEFT", "RIGHT"]
    assert [i.time for i in usual_day(stroke, D, time(13))] == ["13:00", "14:00"]
    assert [i.time for i in usual_day(stroke, D, time(16))] == ["16:00", "18:00"]
    assert usual_day(stroke, D, time(8))[0].dose_mg == "0.1"
    with pytest.raises(ValueError):
        usual_day(stroke, D, time(18, 1))


_plausible = st.sampled_from(["", "0.1", "0.3", "1", "2", "0", "-1", "0.1234", "1.", ".5",
                              "08:00", "18:30", "24:00", "2026-03-02", "2026-02-29", "LEFT",
                              "BOTH", "INTRANASAL", "SELF", "STAFF", "L1"])
_raw = st.one_of(st.text(st.characters(codec=None, exclude_categories=())), _plausible)
_FIELDS = [f for f in DoseInput.__dataclass_fields__ if f != "missed"]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([BASE, MISSED]),
       st.dictionaries(st.sampled_from(_FIELDS), _raw, max_size=3), st.booleans())
def test_random_input_never_raises_and_accepted_doses_are_sane(stroke, base, change, flip):
    raw = replace(base, **change)
    if flip:
        raw = replace(raw, missed=not raw.missed)
    result = validate_dose(raw, ctx(stroke, daily(D, 3)))
    assert (result.value is None) == bool(result.errors)
    assert all(e.field and e.rule and e.message for e in result.errors + result.findings)
    value = result.value
    if value is not None and not value.missed:
        assert value.dose_mg > 0 and value.dose_mg.as_tuple().exponent >= -3
        assert value.dose_mg == Decimal(raw.dose_mg.strip())
        assert value.instillations >= 1 and value.time is not None
        assert value.time == time.fromisoformat(raw.time.strip().zfill(5))
        assert value.date <= TODAY
    if value is not None and value.missed:
        assert value.dose_mg is None and value.instillations == 0 and value.missed_reason


_number = st.from_regex(r"\A-?[0-9]{0,2}(\.[0-9]{0,4})?\Z")
_clock = st.from_regex(r"\A[0-2]?[0-9]:[0-6][0-9]\Z")


@settings(max_examples=500, deadline=None)
@given(st.one_of(_number, _raw), st.one_of(_clock, _raw))
def test_any_accepted_dose_is_positive_with_3_decimals_at_a_real_time(stroke, dose, at):
    result = validate_dose(replace(BASE, dose_mg=dose, time=at), ctx(stroke))
    assert (result.value is None) == bool(result.errors)
    if result.value is not None:
        assert result.value.dose_mg > 0 and result.value.dose_mg.as_tuple().exponent >= -3
        assert result.value.dose_mg == Decimal(dose.strip())
        hours, minutes = at.strip().split(":")
        assert result.value.time == time(int(hours), int(minutes))


# --- courses and compliance ---------------------------------------------------------------
def test_courses_of_a_regimen_without_cycle_are_one(stroke):
    records = daily(D, 3) + daily(date(2026, 4, 1), 3)
    (only,) = courses(records, stroke)
    assert (only.start, only.end, only.days, len(only.records)) == (D, date(2026, 4, 3), 34, 6)
    assert courses([], stroke) == [] and courses([rec(D, missed=True)], stroke) == []


def test_courses_split_on_gaps_longer_than_the_interruption_allowance(cyclic):
    assert MAX_INTERRUPTION_DAYS == 2
    records = (daily(D, 5)  # 1–5 March
               + daily(date(2026, 3, 8), 3)  # 2 dose-free days: same course, to 10 March
               + [rec(date(2026, 3, 12), missed=True)]  # missed: stays with that course
               + daily(date(2026, 3, 14), 2)  # 3 dose-free days: a new course
               + [rec(date(2026, 2, 20), missed=True)])  # before any course: the first
    found = courses(reversed(records), cyclic)
    assert [(c.start, c.end) for c in found] == [(D, date(2026, 3, 10)),
                                                 (date(2026, 3, 14), date(2026, 3, 15))]
    assert [len(c.records) for c in found] == [10, 2]
    assert found[0].records[0].date == date(2026, 2, 20)  # sorted by date
    assert found[0].days == 10


def test_compliance_full(stroke):
    records = daily(D, 7, n=2)
    c = compliance(records, stroke, D, D + timedelta(days=6))
    assert (c.planned, c.given, c.above_plan, c.days, c.full_days, c.percent) == \
        (14, 14, 0, 7, 7, 100.0)


def test_compliance_partial_as_of(stroke):
    records = daily(D, 7, n=2)
    c = compliance(records, stroke, D, D + timedelta(days=13), as_of=D + timedelta(days=9))
    assert (c.planned, c.given, c.days, c.ratio) == (20, 14, 10, 0.7)
    nothing_yet = compliance(records, stroke, D, D + timedelta(days=13), as_of=D - timedelta(1))
    assert (nothing_yet.planned, nothing_yet.ratio, nothing_yet.percent) == (0, None, None)


def test_compliance_with_missed_doses(stroke):
    records = [r for r in daily(D, 7, n=2) if r.date != D + timedelta(days=2)]
    records[3] = rec(records[3].date, 1)  # day 5: one instillation of two
    records.append(rec(D + timedelta(days=2), missed=True))
    c = compliance(records, stroke, D, D + timedelta(days=6))
    assert (c.planned, c.given, c.missed_records, c.full_days) == (14, 11, 1, 5)
    assert c.percent == 78.6


def test_over_dosing_is_not_counted_above_the_daily_plan(stroke):
    records = [rec(D, 4), rec(D + timedelta(days=2), 2), rec(D + timedelta(days=2), 1)]
    c = compliance(records, stroke, D, D + timedelta(days=2))
    assert (c.planned, c.given, c.above_plan, c.full_days) == (6, 4, 3, 2)
    assert compliance(daily(D, 3, n=3), stroke, D, D + timedelta(days=2)).percent == 100.0


def test_compliance_ignores_records_outside_the_window(stroke):
    records = daily(D - timedelta(days=3), 10, n=2)
    c = compliance(records, stroke, D, D + timedelta(days=1))
    assert (c.planned, c.given) == (4, 4)


def test_course_compliance_per_cyclic_course(cyclic):
    first = daily(D, 10, n=2)
    second = daily(date(2026, 5, 1), 5, n=2)  # stopped after 5 of at least 10 days
    result = course_compliance(first + second, cyclic)
    assert [(c.start, k.planned, k.given) for c, k in result] == [
        (D, 20, 20), (date(2026, 5, 1), 20, 10)]
    partial = course_compliance(first + second, cyclic, as_of=date(2026, 5, 3))
    assert partial[1][1].planned == 6 and partial[1][1].given == 6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 6), st.booleans()), max_size=40),
       st.integers(0, 25))
def test_compliance_never_exceeds_the_plan(stroke, items, as_of):
    records = [rec(D + timedelta(days=d), n, missed=m or n == 0) for d, n, m in items]
    c = compliance(records, stroke, D, D + timedelta(days=13), as_of=D + timedelta(days=as_of))
    assert 0 <= c.given <= c.planned and c.full_days <= c.days
    assert c.ratio is None or 0 <= c.ratio <= 1


def test_compliance_is_fast_for_10000_subjects_by_28_days(stroke):
    subject = [rec(D + timedelta(days=i)) for i in range(28) for _ in range(2)]
    end = D + timedelta(days=27)
    started = clock.perf_counter()
    for _ in range(10_000):
        compliance(subject, stroke, D, end)
    assert clock.perf_counter() - started < 2.0  # about 0.15 s on the development machine
