from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from crf_app.domain.errors import PermissionDenied, ValidationFailed
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.services import subjects as svc
from crf_app.storage.models import AuditEvent, Subject, Visit
from tests.conftest import TODAY, fixed_clock


def enrollment(**kw):
    base = dict(screening_number="S01-001", site="S01", initials="ABC", birth_year=1960, sex="F",
                arm="NSX", consent_date=date(2026, 11, 1), enrolled_on=date(2026, 11, 2))
    base.update(kw)
    return Enrollment(**base)


@pytest.fixture
def coord(coordinator):
    coordinator.clock = fixed_clock()
    return coordinator


def count(study, model):
    with study.db.reading() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def test_enroll_creates_subject_visits_and_audit_in_one_go(study, coord):
    before = count(study, AuditEvent)
    sid = svc.enroll_subject(coord, enrollment(baseline_date=date(2026, 11, 3)))
    detail = svc.subject_detail(coord, sid)
    assert detail.status == "on_study" and detail.screening_number == "S01-001"
    assert [v.code for v in detail.visits] == ["SCR", "BL", "D7", "D14", "FU30"]
    assert detail.visits[2].planned_date == date(2026, 11, 9)
    with study.db.reading() as s:
        events = s.execute(select(AuditEvent).where(AuditEvent.id > before)).scalars().all()
    fields = {(e.entity, e.field): e for e in events}
    assert fields[("subject", "initials")].new_value == "ABC"
    assert fields[("subject", "consent_date")].new_value == "2026-11-01"
    assert all(e.username == "coord" and e.occurred_at.tzinfo is not None for e in events)


@pytest.mark.parametrize("change, field", [
    (dict(consent_date=date(2026, 11, 5)), "consent_date"),
    (dict(baseline_date=TODAY + timedelta(days=1)), "baseline_date"),
])
def test_bad_enrollment_changes_nothing(study, coord, change, field):
    before = (count(study, Subject), count(study, AuditEvent))
    with pytest.raises(ValidationFailed) as exc:
        svc.enroll_subject(coord, enrollment(**change))
    assert exc.value.for_field(field)
    assert (count(study, Subject), count(study, AuditEvent)) == before


def test_duplicate_screening_number_refused(study, coord):
    svc.enroll_subject(coord, enrollment())
    before = (count(study, Subject), count(study, Visit), count(study, AuditEvent))
    with pytest.raises(ValidationFailed, match="already used") as exc:
        svc.enroll_subject(coord, enrollment(initials="XYZ"))
    assert exc.value.errors[0].field == "screening_number"
    assert (count(study, Subject), count(study, Visit), count(study, AuditEvent)) == before


def test_baseline_schedules_and_out_of_window_visit_is_a_deviation(study, coord):
    sid = svc.enroll_subject(coord, enrollment())
    assert all(v.planned_date is None for v in svc.subject_detail(coord, sid).visits)
    svc.set_baseline(coord, sid, date(2026, 11, 3))
    visits = {v.code: v for v in svc.subject_detail(coord, sid).visits}
    assert visits["D14"].window_start == date(2026, 11, 14)
    assert svc.record_visit_date(coord, visits["D7"].id, date(2026, 11, 9)) == ""
    deviation = svc.record_visit_date(coord, visits["D14"].id, date(2026, 11, 20),
                                      reason="")
    assert "late" in deviation
    d14 = {v.code: v for v in svc.subject_detail(coord, sid).visits}["D14"]
    assert d14.status == "done" and d14.deviation == deviation


def test_changing_a_recorded_visit_date_needs_a_reason(study, coord):
    sid = svc.enroll_subject(coord, enrollment(baseline_date=date(2026, 11, 3)))
    d7 = svc.subject_detail(coord, sid).visits[2]
    svc.record_visit_date(coord, d7.id, date(2026, 11, 9))
    with pytest.raises(ValidationFailed) as exc:
        svc.record_visit_date(coord, d7.id, date(2026, 11, 8))
    assert exc.value.errors[0].rule == "reason_for_change"
    svc.record_visit_date(coord, d7.id, date(2026, 11, 8), reason="transcription error")
    with study.db.reading() as s:
        ev = s.execute(select(AuditEvent).where(AuditEvent.field == "actual_date")
                       .order_by(AuditEvent.id.desc())).scalars().first()
    assert (ev.old_value, ev.new_value, ev.reason) == ("2026-11-09", "2026-11-08",
                                                       "transcription error")


def test_withdraw_and_complete(study, coord):
    a = svc.enroll_subject(coord, enrollment(baseline_date=date(2026, 11, 3)))
    b = svc.enroll_subject(coord, enrollment(screening_number="S01-002"))
    with pytest.raises(ValidationFailed, match="reason"):
        svc.end_participation(coord, a, "withdrawn", date(2026, 11, 20), "  ")
    svc.end_participation(coord, a, "withdrawn", date(2026, 11, 20), "withdrew consent")
    detail = svc.subject_detail(coord, a)
    assert (detail.status, detail.status_reason) == ("withdrawn", "withdrew consent")
    with pytest.raises(ValidationFailed, match="cannot become"):
        svc.end_participation(coord, b, "completed", date(2026, 11, 20), "done")
    with pytest.raises(ValidationFailed, match="no longer change"):
        svc.set_baseline(coord, a, date(2026, 11, 4), reason="x")


def test_monitor_cannot_enroll_and_site_staff_stay_at_their_site(study, as_role):
    monitor = as_role(Role.MONITOR)
    with pytest.raises(PermissionDenied, match="may not enroll"):
        svc.enroll_subject(monitor, enrollment())
    coord = as_role(Role.COORDINATOR)
    coord.clock = fixed_clock()
    with pytest.raises(PermissionDenied, match="site S01"):
        svc.enroll_subject(coord, enrollment(site="S02", screening_number="S02-001"))
    assert count(study, Subject) == 0


def test_subject_list_shows_next_visit(study, coord):
    svc.enroll_subject(coord, enrollment(baseline_date=date(2026, 11, 20)))
    svc.enroll_subject(coord, enrollment(screening_number="S01-002"))
    rows = svc.list_subjects(coord)
    assert [r.screening_number for r in rows] == ["S01-001", "S01-002"]
    assert rows[0].next_visit == "Screening" and rows[0].next_visit_date == date(2026, 11, 19)
    assert rows[1].next_visit == "" and rows[1].status == "screening"
