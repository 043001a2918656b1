from datetime import date

import pytest
from sqlalchemy import select

from crf_app.domain.errors import (
    PermissionDenied,
    ReasonRequired,
    StaleData,
    ValidationFailed,
)
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.services import forms as fsvc
from crf_app.services import subjects as svc
from crf_app.storage.models import AuditEvent, ItemValue, Query
from tests.conftest import fixed_clock

VITALS = {"VSTIM": "09:30", "SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6",
          "WEIGHT": "80.0", "HEIGHT": "180"}


@pytest.fixture
def coord(coordinator):
    coordinator.clock = fixed_clock()
    return coordinator


@pytest.fixture
def subject(coord):
    return svc.enroll_subject(coord, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                                date(2026, 11, 1), date(2026, 11, 1)))


def visit_id(ctx, subject_id, code):
    return {v.code: v.id for v in svc.subject_detail(ctx, subject_id).visits}[code]


def audit_rows(study, entity="item"):
    with study.db.reading() as s:
        return s.execute(select(AuditEvent).where(AuditEvent.entity == entity)
                         .order_by(AuditEvent.id)).scalars().all()


def test_matrix_follows_the_schedule(coord, subject):
    m = fsvc.form_matrix(coord, subject)
    scr = visit_id(coord, subject, "SCR")
    bl = visit_id(coord, subject, "BL")
    assert m.cells[(scr, "eligibility")].status == "not_started"
    assert (bl, "eligibility") not in m.cells
    assert (bl, "bdi_ii") in m.cells and (scr, "bdi_ii") not in m.cells
    assert [f for f, _t in m.forms][:2] == ["eligibility", "demographics"]


def test_save_reopen_and_bmi_computed(study, coord, subject):
    scr = visit_id(coord, subject, "SCR")
    out = fsvc.save_form(coord, scr, "vital_signs", VITALS, complete=True, expected_version=0)
    assert out.status == "complete" and out.queries_opened == []
    snap = fsvc.open_form(coord, scr, "vital_signs")
    assert snap.raw["SYSBP"] == "128" and snap.raw["BMI"] == "24.7"  # 80 / 1.8² = 24.69
    assert snap.row_version == out.row_version > 0
    created = {e.field: (e.old_value, e.new_value) for e in audit_rows(study)}
    assert created["SYSBP"] == (None, "128") and created["BMI"] == (None, "24.7")


def test_hard_limit_refused_with_one_message_per_item_nothing_saved(study, coord, subject):
    scr = visit_id(coord, subject, "SCR")
    bad = dict(VITALS, SYSBP="400", PULSE="7a", TEMP="36.65")
    with pytest.raises(ValidationFailed) as exc:
        fsvc.save_form(coord, scr, "vital_signs", bad)
    fields = {e.field: e.rule for e in exc.value.errors}
    assert fields == {"SYSBP": "hard_max", "PULSE": "not_a_number", "TEMP": "too_many_decimals"}
    assert "Systolic BP" in exc.value.for_field("SYSBP")[0].message
    with study.db.reading() as s:
        assert s.execute(select(ItemValue)).first() is None
    assert audit_rows(study) == []


def test_required_only_when_marking_complete(coord, subject):
    scr = visit_id(coord, subject, "SCR")
    fsvc.save_form(coord, scr, "vital_signs", {"SYSBP": "120"})
    with pytest.raises(ValidationFailed) as exc:
        fsvc.save_form(coord, scr, "vital_signs", {"SYSBP": "120"}, complete=True)
    assert {"DIABP", "PULSE"} <= {e.field for e in exc.value.errors}
    assert all(e.rule == "required" for e in exc.value.errors)


def test_soft_limit_saves_and_opens_an_automatic_query_closed_when_corrected(study, coord,
                                                                            subject):
    scr = visit_id(coord, subject, "SCR")
    out = fsvc.save_form(coord, scr, "vital_signs", dict(VITALS, SYSBP="195"))
    assert out.status == "in_progress" and len(out.queries_opened) == 1
    snap = fsvc.open_form(coord, scr, "vital_signs")
    assert snap.raw["SYSBP"] == "195" and ("SYSBP", 0) in snap.open_queries
    assert fsvc.form_matrix(coord, subject).cells[(scr, "vital_signs")].open_queries == 1
    again = fsvc.save_form(coord, scr, "vital_signs", dict(VITALS, SYSBP="196"),
                           reason="re-measured")
    assert again.queries_opened == []  # the open query is not duplicated
    fixed = fsvc.save_form(coord, scr, "vital_signs", VITALS, reason="transcription error")
    assert len(fixed.queries_closed) == 1
    with study.db.reading() as s:
        q = s.execute(select(Query)).scalar_one()
        assert q.state == "closed" and q.origin == "auto" and q.item_id == "SYSBP"
        assert [m.kind for m in q.messages] == ["open", "close"]


def test_correction_needs_a_reason_and_is_audited_item_by_item(study, coord, subject):
    scr = visit_id(coord, subject, "SCR")
    fsvc.save_form(coord, scr, "vital_signs", VITALS)
    with pytest.raises(ReasonRequired):
        fsvc.save_form(coord, scr, "vital_signs", dict(VITALS, PULSE="70", TEMP=""))
    fsvc.save_form(coord, scr, "vital_signs", dict(VITALS, PULSE="70", TEMP=""),
                   reason="wrong patient's sheet")
    changes = [(e.field, e.old_value, e.new_value, e.reason) for e in audit_rows(study)
               if e.action == "update"]
    assert ("PULSE", "72", "70", "wrong patient's sheet") in changes
    assert ("TEMP", "36.6", None, "wrong patient's sheet") in changes
    assert len(changes) == 2


def test_stale_copy_is_refused(coord, subject, as_role):
    scr = visit_id(coord, subject, "SCR")
    first = fsvc.open_form(coord, scr, "vital_signs")
    inv = as_role(Role.INVESTIGATOR)
    inv.clock = fixed_clock()
    fsvc.save_form(inv, scr, "vital_signs", VITALS, expected_version=0)
    with pytest.raises(StaleData, match="changed by inv"):
        fsvc.save_form(coord, scr, "vital_signs", VITALS, expected_version=first.row_version)


def test_monitor_cannot_save(coord, subject, as_role):
    scr = visit_id(coord, subject, "SCR")
    with pytest.raises(PermissionDenied):
        fsvc.save_form(as_role(Role.MONITOR), scr, "vital_signs", VITALS)


def test_form_not_in_visit_is_refused(coord, subject):
    bl = visit_id(coord, subject, "BL")
    with pytest.raises(Exception, match="not part of the BL visit"):
        fsvc.open_form(coord, bl, "eligibility")


ELIGIBLE = {"IE_AGE": "Y", "IE_STROKE": "Y", "IE_ONSET": "Y", "IE_NIHSS": "Y", "IE_CONSENT": "Y",
            "SEX": "M", "EX_ENDO": "N", "EX_PSYCH": "N", "EX_ANX": "N", "EX_MALIG": "N"}


def test_failed_eligibility_makes_a_screen_failure_and_blocks_randomisation(coord, subject):
    scr = visit_id(coord, subject, "SCR")
    out = fsvc.save_form(coord, scr, "eligibility", dict(ELIGIBLE, EX_ANX="Y"), complete=True)
    assert out.result.values["ELIGIBLE"] == "N" and out.subject_status == "screen_failed"
    with pytest.raises(ValidationFailed):
        svc.set_baseline(coord, subject, date(2026, 11, 3))


def test_eligible_subject_can_be_randomised(coord, subject):
    scr = visit_id(coord, subject, "SCR")
    out = fsvc.save_form(coord, scr, "eligibility", ELIGIBLE, complete=True)
    assert out.result.values["ELIGIBLE"] == "Y" and out.subject_status == "screening"
    svc.set_baseline(coord, subject, date(2026, 11, 3))
    assert svc.subject_detail(coord, subject).status == "on_study"


def test_repeating_rows_round_trip(coord, subject):
    scr = visit_id(coord, subject, "SCR")
    form = fsvc.form_library(coord.study).get("conmeds")
    section = next(s for s in form.sections if s.repeating)
    first_item = section.items[0].id
    rows = [{first_item: "Aspirin"}, {first_item: "Atorvastatin"}]
    raw = {section.id: rows}
    try:
        fsvc.save_form(coord, scr, "conmeds", raw)
    except ValidationFailed as exc:  # fill whatever else the row needs, as a user would
        pytest.fail(f"conmeds row refused: {exc}")
    snap = fsvc.open_form(coord, scr, "conmeds")
    assert [r[first_item] for r in snap.raw[section.id]] == ["Aspirin", "Atorvastatin"]
