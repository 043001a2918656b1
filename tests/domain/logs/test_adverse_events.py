"""Adverse-event rules: every check trips on one input and passes on its neighbour."""

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crf_app.domain.adverse_events import (
    AE_ACTIONS,
    AE_GRADES,
    AE_LOCATIONS,
    AE_OUTCOMES,
    AE_RELATIONSHIPS,
    AE_SEVERITIES,
    AE_TERMS,
    SERIOUSNESS_CRITERIA,
    AeContext,
    AeInput,
    SaeState,
    ae_summary,
    ae_table,
    ae_table_csv,
    ae_table_text,
    sae_clock_state,
    sae_deadline,
    validate_adverse_event,
)

TODAY = date(2026, 3, 20)
CTX = AeContext(consent_date=date(2026, 2, 1), last_dose_date=date(2026, 3, 10),
                subject_status="on_study", today=TODAY)
BASE = AeInput(term="HEADACHE", start_date="2026-03-02", start_time="09:15", ongoing=True,
               severity="MILD", grade="1", serious="N", relationship="POSSIBLE", action="NONE",
               outcome="NOT_RECOVERED", treatment="Paracetamol 500 mg")
ENDED = dict(ongoing=False, end_date="2026-03-05", outcome="RECOVERED")
FATAL_OK = dict(ongoing=False, end_date="2026-03-05", outcome="FATAL", grade="5",
                severity="SEVERE", serious="Y", criteria=["DEATH"])
SAE = dict(serious="Y", criteria=["HOSPITALISATION"], grade="3", severity="SEVERE")


def check(**change):
    return validate_adverse_event(replace(BASE, **change), CTX)


def test_base_is_valid_and_typed():
    result = check()
    assert result.errors == [] and result.flags == []
    ae = result.value
    assert ae.term == "HEADACHE" and ae.location == "NOT_APPLICABLE"
    assert ae.start_date == date(2026, 3, 2) and ae.start_time == time(9, 15)
    assert ae.end_date is None and ae.ongoing and ae.grade == 1 and ae.serious is False
    assert ae.criteria == () and ae.treatment == "Paracetamol 500 mg"


def test_codes_are_normalised_and_criteria_ordered():
    ae = check(term=" nasal_dryness ", location="left_nostril", severity="severe", grade=" 3 ",
               serious="y", criteria=["MEDICALLY_IMPORTANT", "HOSPITALISATION",
                                      "HOSPITALISATION", ""]).value
    assert (ae.term, ae.location, ae.severity, ae.grade) == ("NASAL_DRYNESS", "LEFT_NOSTRIL",
                                                              "SEVERE", 3)
    assert ae.serious is True
    assert ae.criteria == ("HOSPITALISATION", "MEDICALLY_IMPORTANT")


def test_codelists_are_code_to_label_mappings_the_gui_can_use():
    assert list(AE_TERMS)[:3] == ["NASAL_IRRITATION", "NASAL_DRYNESS", "NASAL_BURNING"]
    assert AE_TERMS["NASAL_IRRITATION"] == "Nasal irritation"
    assert list(AE_LOCATIONS) == ["LEFT_NOSTRIL", "RIGHT_NOSTRIL", "BOTH_NOSTRILS",
                                  "NOT_APPLICABLE"]
    assert list(AE_SEVERITIES) == ["MILD", "MODERATE", "SEVERE"]
    assert list(AE_GRADES) == ["1", "2", "3", "4", "5"]
    assert len(SERIOUSNESS_CRITERIA) == 6 and "DEATH" in SERIOUSNESS_CRITERIA
    assert list(AE_RELATIONSHIPS) == ["NOT_RELATED", "UNLIKELY", "POSSIBLE", "PROBABLE",
                                      "DEFINITE"]
    assert list(AE_ACTIONS) == ["NONE", "DOSE_REDUCED", "INTERRUPTED", "WITHDRAWN"]
    assert "RECOVERED_WITH_SEQUELAE" in AE_OUTCOMES
    with pytest.raises(TypeError):
        AE_TERMS["X"] = "y"  # type: ignore[index]


# (tripping change, passing change, field, rule)
ERROR_RULES = [
    (dict(term=""), dict(term="DIZZINESS"), "term", "required"),
    (dict(term="MIGRAINE"), dict(term="INSOMNIA"), "term", "codelist"),
    (dict(term="OTHER"), dict(term="OTHER", verbatim="Epistaxis"), "verbatim", "required"),
    (dict(verbatim="tension\theadache"), dict(verbatim="tension headache"), "verbatim",
     "control_characters"),
    (dict(verbatim="abc\u202edef"), dict(verbatim="abc def"), "verbatim", "control_characters"),
    (dict(verbatim="x\udcffy"), dict(verbatim="xy"), "verbatim", "control_characters"),
    (dict(verbatim="x" * 201), dict(verbatim="x" * 200), "verbatim", "too_long"),
    (dict(term="NASAL_DRYNESS"), dict(term="NASAL_DRYNESS", location="BOTH_NOSTRILS"),
     "location", "required"),
    (dict(term="NASAL_BURNING", location="NOT_APPLICABLE"),
     dict(term="NASAL_BURNING", location="RIGHT_NOSTRIL"), "location", "location_nasal"),
    (dict(location="LEFT_NOSTRIL"), dict(location="NOT_APPLICABLE"), "location",
     "location_nasal"),
    (dict(location="NOSE"), dict(location=""), "location", "codelist"),
    (dict(start_date=""), dict(start_date="2026-03-01"), "start_date", "required"),
    (dict(start_date="2026-02-30"), dict(start_date="2026-02-28"), "start_date", "date"),
    (dict(start_date="02/03/2026"), dict(start_date="2026-03-02"), "start_date", "date"),
    (dict(start_date="2026-3-2"), dict(start_date="2026-03-02"), "start_date", "date"),
    (dict(start_date="2026-03-21"), dict(start_date="2026-03-20"), "start_date", "not_future"),
    (dict(start_date="2026-01-31"), dict(start_date="2026-02-01"), "start_date",
     "before_consent"),
    (dict(start_time="25:00"), dict(start_time="23:59"), "start_time", "time"),
    (dict(start_time="12:60"), dict(start_time="8:05"), "start_time", "time"),
    (dict(start_time="noon"), dict(start_time=""), "start_time", "time"),
    (dict(ENDED, end_date="2026-03-32"), dict(ENDED, end_date="2026-03-12"), "end_date", "date"),
    (dict(ENDED, end_date="2026-03-21"), dict(ENDED, end_date="2026-03-20"), "end_date",
     "not_future"),
    (dict(ENDED, end_date="2026-03-01"), dict(ENDED, end_date="2026-03-02"), "end_date",
     "end_before_start"),
    (dict(end_date="2026-03-05"), dict(end_date=""), "end_date", "ongoing_end_date"),
    (dict(ENDED, end_date=""), dict(ENDED), "end_date", "ongoing_end_date"),
    (dict(severity=""), dict(severity="MODERATE"), "severity", "required"),
    (dict(severity="BAD"), dict(severity="MILD"), "severity", "codelist"),
    (dict(grade=""), dict(grade="2"), "grade", "required"),
    (dict(grade="6"), dict(grade="4"), "grade", "codelist"),
    (dict(grade="0"), dict(grade="1"), "grade", "codelist"),
    (dict(grade="2.0"), dict(grade="2"), "grade", "codelist"),
    (dict(serious=""), dict(serious="N"), "serious", "required"),
    (dict(serious="maybe"), dict(serious="N"), "serious", "codelist"),
    (dict(SAE, criteria=[]), dict(SAE), "criteria", "criteria_required"),
    (dict(criteria=["HOSPITALISATION"]), dict(criteria=[]), "criteria",
     "criteria_not_serious"),
    (dict(SAE, criteria=["HOSPITAL"]), dict(SAE, criteria=["HOSPITALISATION"]), "criteria",
     "codelist"),
    (dict(relationship=""), dict(relationship="NOT_RELATED"), "relationship", "required"),
    (dict(relationship="LIKELY"), dict(relationship="PROBABLE"), "relationship", "codelist"),
    (dict(action=""), dict(action="INTERRUPTED"), "action", "required"),
    (dict(action="STOPPED"), dict(action="WITHDRAWN"), "action", "codelist"),
    (dict(outcome=""), dict(outcome="RECOVERING"), "outcome", "required"),
    (dict(outcome="DEAD"), dict(outcome="UNKNOWN"), "outcome", "codelist"),
    (dict(SAE, grade="5", **ENDED), dict(SAE, grade="4", **ENDED), "grade", "grade5_fatal"),
    (dict(FATAL_OK, grade="4"), dict(FATAL_OK), "outcome", "grade5_fatal"),
    (dict(FATAL_OK, serious="N", criteria=[]), dict(FATAL_OK), "serious", "death_criterion"),
    (dict(FATAL_OK, criteria=["HOSPITALISATION"]),
     dict(FATAL_OK, criteria=["HOSPITALISATION", "DEATH"]), "criteria", "death_criterion"),
    (dict(SAE, criteria=["DEATH"], **ENDED), dict(SAE, criteria=["LIFE_THREATENING"], **ENDED),
     "criteria", "death_criterion"),
    (dict(outcome="RECOVERED"), dict(outcome="RECOVERING"), "outcome", "outcome_ongoing"),
    (dict(ENDED, outcome="NOT_RECOVERED"), dict(ENDED, outcome="RECOVERED_WITH_SEQUELAE"),
     "outcome", "outcome_ongoing"),
    (dict(treatment="ice\x00pack"), dict(treatment="ice pack"), "treatment",
     "control_characters"),
    (dict(treatment="y" * 501), dict(treatment="y" * 500), "treatment", "too_long"),
]


@pytest.mark.parametrize("trip, ok, field, rule", ERROR_RULES,
                         ids=[f"{f}-{r}-{i}" for i, (_, _, f, r) in enumerate(ERROR_RULES)])
def test_each_error_rule_trips_and_its_neighbour_passes(trip, ok, field, rule):
    tripped = check(**trip)
    assert [(e.field, e.rule) for e in tripped.errors] == [(field, rule)]
    assert tripped.value is None
    assert tripped.errors[0].message
    passed = check(**ok)
    assert passed.errors == [] and passed.value is not None


def test_other_term_may_name_a_nostril_or_none():
    assert check(term="OTHER", verbatim="Epistaxis", location="LEFT_NOSTRIL").value.location \
        == "LEFT_NOSTRIL"
    assert check(term="OTHER", verbatim="Rash").value.location == "NOT_APPLICABLE"


def test_fatal_event_is_accepted_with_all_its_pieces():
    ae = check(**FATAL_OK).value
    assert ae.grade == 5 and ae.outcome == "FATAL" and ae.criteria == ("DEATH",)
    assert ae.end_date == date(2026, 3, 5) and not ae.ongoing


@pytest.mark.parametrize("ctx_change, start, flagged", [
    (dict(last_dose_date=date(2026, 1, 30)), "2026-03-02", ["late_onset"]),  # 31 days
    (dict(last_dose_date=date(2026, 1, 31)), "2026-03-02", []),  # 30 days
    (dict(last_dose_date=None), "2026-03-02", []),
    (dict(subject_status="withdrawn"), "2026-03-02", ["subject_withdrawn"]),
    (dict(subject_status="completed"), "2026-03-02", []),
])
def test_flags_save_but_mark_for_review(ctx_change, start, flagged):
    result = validate_adverse_event(replace(BASE, start_date=start), replace(CTX, **ctx_change))
    assert result.value is not None and result.errors == []
    assert [f.rule for f in result.flags] == flagged
    assert all(f.message for f in result.flags)


def test_several_errors_are_all_reported():
    result = check(term="", start_date="x", grade="9", serious="")
    assert {e.field for e in result.errors} == {"term", "start_date", "grade", "serious"}


_plausible = st.sampled_from(["", "HEADACHE", "OTHER", "NASAL_DRYNESS", "LEFT_NOSTRIL",
                              "NOT_APPLICABLE", "2026-03-02", "2026-03-05", "2026-02-30",
                              "09:00", "24:00", "MILD", "1", "5", "Y", "N", "DEATH",
                              "HOSPITALISATION", "POSSIBLE", "NONE", "FATAL", "RECOVERED",
                              "NOT_RECOVERED", "text"])
_raw = st.one_of(st.text(st.characters(codec=None, exclude_categories=())), _plausible)


@settings(max_examples=400, deadline=None)
@given(st.builds(AeInput, term=_raw, verbatim=_raw, location=_raw, start_date=_raw,
                 start_time=_raw, end_date=_raw, ongoing=st.booleans(), severity=_raw,
                 grade=_raw, serious=_raw, criteria=st.lists(_raw, max_size=3),
                 relationship=_raw, action=_raw, outcome=_raw, treatment=_raw))
def test_random_input_never_raises_and_errors_or_value(raw):
    _check_invariants(raw)


_FIELDS = [f for f in AeInput.__dataclass_fields__ if f not in ("ongoing", "criteria")]
_BASES = [BASE, replace(BASE, **ENDED), replace(BASE, **FATAL_OK), replace(BASE, **SAE)]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_BASES), st.dictionaries(st.sampled_from(_FIELDS), _raw, max_size=3),
       st.booleans(), st.lists(_raw, max_size=2))
def test_valid_event_with_random_fields_never_raises(base, change, flip, criteria):
    raw = replace(base, **change)
    if flip:
        raw = replace(raw, ongoing=not raw.ongoing, criteria=criteria)
    _check_invariants(raw)


def _check_invariants(raw):
    result = validate_adverse_event(raw, CTX)
    assert (result.value is None) == bool(result.errors)
    assert all(e.field and e.rule and e.message for e in result.errors)
    ae = result.value
    if ae is not None:
        assert 1 <= ae.grade <= 5 and ae.start_date <= TODAY
        assert ae.end_date is None or ae.start_date <= ae.end_date <= TODAY
        assert ae.ongoing == (ae.end_date is None)
        assert (ae.grade == 5) == (ae.outcome == "FATAL")
        assert ae.serious == bool(ae.criteria)


# --- SAE clock ----------------------------------------------------------------------------
RECORDED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def test_sae_deadline_is_24_hours_later_in_utc():
    assert sae_deadline(RECORDED) == datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
    local = datetime(2026, 3, 2, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert sae_deadline(local) == datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        sae_deadline(datetime(2026, 3, 2, 10, 0))


@pytest.mark.parametrize("reported, now, state, remaining, late, label", [
    (None, datetime(2026, 3, 2, 12, 30, tzinfo=UTC), SaeState.RUNNING,
     timedelta(hours=21, minutes=30), timedelta(0), "21 h 30 min left to report"),
    (None, datetime(2026, 3, 3, 10, 0, tzinfo=UTC), SaeState.RUNNING, timedelta(0),
     timedelta(0), "0 h 00 min left to report"),
    (None, datetime(2026, 3, 3, 12, 5, tzinfo=UTC), SaeState.OVERDUE, timedelta(0),
     timedelta(hours=2, minutes=5), "Overdue by 2 h 05 min"),
    (datetime(2026, 3, 3, 9, 0, tzinfo=UTC), datetime(2026, 3, 9, tzinfo=UTC),
     SaeState.REPORTED, timedelta(0), timedelta(0), "Reported on time"),
    (datetime(2026, 3, 3, 11, 0, tzinfo=UTC), datetime(2026, 3, 9, tzinfo=UTC),
     SaeState.REPORTED, timedelta(0), timedelta(hours=1), "Reported 1 h 00 min late"),
])
def test_sae_clock_state(reported, now, state, remaining, late, label):
    clock = sae_clock_state(sae_deadline(RECORDED), reported, now)
    assert (clock.state, clock.remaining, clock.late_by, clock.label) == (state, remaining,
                                                                          late, label)


def test_sae_clock_refuses_naive_times():
    with pytest.raises(ValueError):
        sae_clock_state(sae_deadline(RECORDED), None, datetime(2026, 3, 2))


# --- summaries ----------------------------------------------------------------------------
EVENTS = [("S02", "HEADACHE", 2, True), ("S01", "HEADACHE", 1, False),
          ("S01", "HEADACHE", 1, False), ("S01", "NASAL_DRYNESS", 1, False),
          ("S01", "LEGACY_TERM", 5, True)]


def test_ae_summary_counts_term_and_grade():
    aes = [check().value, check().value, check(grade="2").value,
           check(term="INSOMNIA", grade="2").value]
    assert ae_summary(aes) == {("HEADACHE", 1): 2, ("HEADACHE", 2): 1, ("INSOMNIA", 2): 1}
    assert ae_summary([]) == {}


def test_ae_table_csv_study_level():
    assert ae_table_csv(EVENTS) == [
        ["site", "term", "label", "grade_1", "grade_2", "grade_3", "grade_4", "grade_5",
         "total", "serious"],
        ["ALL", "NASAL_DRYNESS", "Nasal dryness", "1", "0", "0", "0", "0", "1", "0"],
        ["ALL", "HEADACHE", "Headache", "2", "1", "0", "0", "0", "3", "1"],
        ["ALL", "LEGACY_TERM", "LEGACY_TERM", "0", "0", "0", "0", "1", "1", "1"],
        ["ALL", "ANY", "Any adverse event", "3", "1", "0", "0", "1", "5", "2"],
    ]


def test_ae_table_by_site_then_study():
    rows = ae_table(EVENTS, by_site=True)
    assert [(r.site, r.term, r.total, r.serious) for r in rows] == [
        ("S01", "NASAL_DRYNESS", 1, 0), ("S01", "HEADACHE", 2, 0), ("S01", "LEGACY_TERM", 1, 1),
        ("S01", "ANY", 4, 1), ("S02", "HEADACHE", 1, 1), ("S02", "ANY", 1, 1),
        ("ALL", "NASAL_DRYNESS", 1, 0), ("ALL", "HEADACHE", 3, 1), ("ALL", "LEGACY_TERM", 1, 1),
        ("ALL", "ANY", 5, 2)]
    assert rows[1].by_grade == (2, 0, 0, 0, 0)


def test_ae_table_text():
    text = ae_table_text(EVENTS, by_site=True)
    lines = text.splitlines()
    assert lines[0] == "Site S01" and "All sites" in lines
    headache = next(ln for ln in lines[lines.index("All sites"):] if ln.startswith("Headache"))
    assert headache.split()[1:] == ["2", "1", "0", "0", "0", "3", "1"]
    assert ae_table_text([]) == "No adverse events."
    assert ae_table([]) == []


def test_ae_table_refuses_a_grade_outside_1_to_5():
    with pytest.raises(ValueError, match="grade"):
        ae_table([("S01", "HEADACHE", 6, False)])
