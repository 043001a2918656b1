"""Adverse events and the dosing log through the services: rules, queries, roles, audit."""

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

import pytest
from sqlalchemy import func, select

from crf_app.domain.adverse_events import AeInput
from crf_app.domain.dosing import DoseInput
from crf_app.domain.errors import (
    PermissionDenied,
    ReasonRequired,
    StaleData,
    ValidationFailed,
)
from crf_app.domain.protocol import ArmDef
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment, SubjectStatus
from crf_app.integrity import verify_audit
from crf_app.services import adverse_events as ae_svc
from crf_app.services import dosing as dose_svc
from crf_app.services import reports
from crf_app.services import subjects as svc
from crf_app.storage.log_models import AdverseEvent, DosingRecord
from crf_app.storage.models import AuditEvent, Query
from tests.conftest import PASSWORD, fixed_clock

NOW = fixed_clock()()  # 2026-11-24 10:00 UTC
AE = AeInput(term="HEADACHE", start_date="2026-11-10", end_date="2026-11-11", severity="MILD",
             grade="1", serious="N", action="NONE", outcome="RECOVERED")
SAE = replace(AE, term="DIZZINESS", severity="SEVERE", grade="3", serious="Y",
              criteria=["HOSPITALISATION"], end_date="", ongoing=True, outcome="RECOVERING")
DOSE = DoseInput(date="2026-09-02", time="08:00", dose_mg="0.1", instillations="1",
                 nostril="LEFT", lot="L2026-01", given_by="SELF")


@pytest.fixture
def coord(coordinator):
    coordinator.clock = fixed_clock()
    return coordinator


@pytest.fixture
def inv(as_role):
    ctx = as_role(Role.INVESTIGATOR)
    ctx.clock = fixed_clock()
    return ctx


@pytest.fixture
def monitor(as_role):
    ctx = as_role(Role.MONITOR)
    ctx.clock = fixed_clock()
    return ctx


def enrol(ctx, number="S01-001", baseline=date(2026, 9, 2), consent=date(2026, 9, 1)):
    return svc.enroll_subject(ctx, Enrollment(number, "S01", "ABC", 1960, "F", "NSX", consent,
                                              consent, baseline))


@pytest.fixture
def subject(coord):
    return enrol(coord)


def count(study, model, *where):
    with study.db.reading() as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def audit(study, entity):
    with study.db.reading() as s:
        return s.execute(select(AuditEvent).where(AuditEvent.entity == entity)
                         .order_by(AuditEvent.id)).scalars().all()


def queries(study, rule=None):
    with study.db.reading() as s:
        q = select(Query).where(Query.target == "dose")
        if rule:
            q = q.where(Query.rule == rule)
        rows = s.execute(q.order_by(Query.id)).scalars().all()
        for row in rows:
            row.messages  # noqa: B018 - loaded while the session is open
        return rows


# --- adverse events -------------------------------------------------------------------------
def test_record_lists_and_audits_field_by_field(study, coord, subject):
    ae_id = ae_svc.record_adverse_event(coord, subject, AE)
    [row] = ae_svc.list_adverse_events(coord, subject)
    assert (row.id, row.sequence, row.term_label, row.location) == (ae_id, 1, "Headache",
                                                                     "NOT_APPLICABLE")
    assert row.relationship is None  # awaiting the investigator's assessment
    assert row.start_date == date(2026, 11, 10) and row.sae_state == "" and row.flags == ()
    events = audit(study, "adverse_event")
    fields = {e.field: e.new_value for e in events}
    assert fields["term"] == "HEADACHE" and fields["grade"] == "1"
    assert fields["start_date"] == "2026-11-10" and "relationship" not in fields
    assert {e.entity_id for e in events} == {"S01-001/AE1"}
    assert {e.occurred_at for e in events} == {NOW}
    assert verify_audit(study.db).ok


@pytest.mark.parametrize("trip, ok, field, rule", [
    (dict(end_date="2026-11-09"), dict(end_date="2026-11-10"), "end_date", "end_before_start"),
    (dict(start_date="2026-08-31", end_date="2026-09-01"),
     dict(start_date="2026-09-01", end_date="2026-09-01"), "start_date", "before_consent"),
    (dict(grade="5", serious="Y", criteria=["DEATH"]),
     dict(grade="5", serious="Y", criteria=["DEATH"], outcome="FATAL"), "grade",
     "grade5_fatal"),
])
def test_ae_rule_trips_nothing_written_and_its_neighbour_saves(study, coord, subject, trip, ok,
                                                              field, rule):
    with pytest.raises(ValidationFailed) as exc:
        ae_svc.record_adverse_event(coord, subject, replace(AE, **trip))
    assert (field, rule) in [(e.field, e.rule) for e in exc.value.errors]
    assert count(study, AdverseEvent) == 0 and audit(study, "adverse_event") == []
    ae_svc.record_adverse_event(coord, subject, replace(AE, **ok))
    assert count(study, AdverseEvent) == 1


def test_sae_deadline_set_then_cleared_when_reported(study, coord, subject):
    ae_id = ae_svc.record_adverse_event(coord, subject, SAE)
    [alert] = ae_svc.open_sae_alerts(coord)
    assert alert.ae_id == ae_id and alert.screening_number == "S01-001"
    assert alert.deadline == NOW + timedelta(hours=24) and not alert.overdue
    assert alert.label == "24 h 00 min left to report"
    [row] = ae_svc.list_adverse_events(coord, subject)
    assert row.sae_state == "running" and row.report_due == NOW + timedelta(hours=24)
    assert ae_svc.open_sae_alerts(coord, subject)  # the subject's banner too

    coord.clock = lambda: NOW + timedelta(hours=30)
    [late] = ae_svc.open_sae_alerts(coord)
    assert late.overdue and late.label == "Overdue by 6 h 00 min"
    with pytest.raises(ValidationFailed, match="future"):
        ae_svc.mark_sae_reported(coord, ae_id, NOW + timedelta(hours=31))
    ae_svc.mark_sae_reported(coord, ae_id, NOW + timedelta(hours=20))
    assert ae_svc.open_sae_alerts(coord) == []
    [row] = ae_svc.list_adverse_events(coord, subject)
    assert row.sae_state == "reported" and row.report_due is None
    assert row.sae_label == "Reported on time"
    assert [e.field for e in audit(study, "adverse_event")][-1] == "sae_reported_at"
    with pytest.raises(ValidationFailed, match="reason for change"):
        ae_svc.mark_sae_reported(coord, ae_id, NOW + timedelta(hours=21))


def test_a_non_serious_event_has_no_clock_and_cannot_be_reported(coord, subject):
    ae_id = ae_svc.record_adverse_event(coord, subject, AE)
    assert ae_svc.open_sae_alerts(coord) == []
    with pytest.raises(ValidationFailed, match="Only a serious"):
        ae_svc.mark_sae_reported(coord, ae_id, NOW)


def test_late_onset_is_saved_and_flagged(coord, subject):
    dose_svc.record_dose(coord, subject, replace(DOSE, date="2026-09-05"))
    late = ae_svc.record_adverse_event(coord, subject, replace(AE, start_date="2026-10-06",
                                                               end_date="2026-10-07"))
    early = ae_svc.record_adverse_event(coord, subject, replace(AE, start_date="2026-10-05",
                                                                end_date="2026-10-07"))
    rows = {r.id: r for r in ae_svc.list_adverse_events(coord, subject)}
    assert rows[late].flags == ("late_onset",) and "31 days" in rows[late].flag_text[0]
    assert rows[early].flags == ()


def test_withdrawn_subject_event_is_allowed_and_flagged(coord, subject):
    other = enrol(coord, "S01-002")
    svc.end_participation(coord, subject, SubjectStatus.WITHDRAWN, date(2026, 11, 20),
                          "withdrew consent")
    ae_svc.record_adverse_event(coord, subject, AE)
    ae_svc.record_adverse_event(coord, other, AE)
    assert ae_svc.list_adverse_events(coord, subject)[0].flags == ("subject_withdrawn",)
    assert ae_svc.list_adverse_events(coord, other)[0].flags == ()


def test_only_the_investigator_sets_or_changes_causality(study, coord, inv, subject):
    with pytest.raises(PermissionDenied, match="causality"):
        ae_svc.record_adverse_event(coord, subject, replace(AE, relationship="POSSIBLE"))
    assert count(study, AdverseEvent) == 0
    ae_id = ae_svc.record_adverse_event(coord, subject, AE)
    row = ae_svc.list_adverse_events(inv, subject)[0]
    # The investigator's first assessment is not a correction: no reason needed.
    ae_svc.update_adverse_event(inv, ae_id, replace(AE, relationship="POSSIBLE"),
                                expected_version=row.row_version)
    row = ae_svc.list_adverse_events(coord, subject)[0]
    assert row.relationship == "POSSIBLE"
    with pytest.raises(PermissionDenied):
        ae_svc.update_adverse_event(coord, ae_id, replace(AE, relationship="PROBABLE"),
                                    reason="x")
    with pytest.raises(PermissionDenied):
        ae_svc.update_adverse_event(coord, ae_id, AE, reason="cleared")
    # The coordinator corrects other fields, keeping the investigator's assessment.
    ae_svc.update_adverse_event(coord, ae_id, replace(AE, relationship="POSSIBLE",
                                                      severity="MODERATE", grade="2"),
                                reason="source re-read")
    assert ae_svc.list_adverse_events(coord, subject)[0].relationship == "POSSIBLE"
    # An investigator must give the relationship (the domain rule applies to them).
    with pytest.raises(ValidationFailed) as exc:
        ae_svc.record_adverse_event(inv, subject, AE)
    assert [(e.field, e.rule) for e in exc.value.errors] == [("relationship", "required")]


def test_monitor_can_read_but_never_edit(study, coord, monitor, subject):
    ae_id = ae_svc.record_adverse_event(coord, subject, SAE)
    assert len(ae_svc.list_adverse_events(monitor, subject)) == 1
    with pytest.raises(PermissionDenied):
        ae_svc.record_adverse_event(monitor, subject, AE)
    with pytest.raises(PermissionDenied):
        ae_svc.update_adverse_event(monitor, ae_id, SAE, reason="x")
    with pytest.raises(PermissionDenied):
        ae_svc.mark_sae_reported(monitor, ae_id, NOW)
    with pytest.raises(PermissionDenied):
        dose_svc.record_dose(monitor, subject, DOSE)
    with pytest.raises(PermissionDenied):
        dose_svc.record_usual_day(monitor, subject, date(2026, 9, 3), time(8), "L1")
    assert count(study, DosingRecord) == 0 and count(study, AdverseEvent) == 1


def test_correction_needs_a_reason_is_audited_and_stale_copies_are_refused(study, coord,
                                                                           subject):
    ae_id = ae_svc.record_adverse_event(coord, subject, AE)
    version = ae_svc.list_adverse_events(coord, subject)[0].row_version
    changed = replace(AE, grade="2", severity="MODERATE")
    with pytest.raises(ReasonRequired):
        ae_svc.update_adverse_event(coord, ae_id, changed, expected_version=version)
    saved = ae_svc.update_adverse_event(coord, ae_id, changed, reason="typo",
                                        expected_version=version)
    assert saved.changed == ["severity", "grade"] and saved.row_version == version + 1
    updates = [(e.field, e.old_value, e.new_value, e.reason)
               for e in audit(study, "adverse_event") if e.action == "update"]
    assert updates == [("severity", "MILD", "MODERATE", "typo"), ("grade", "1", "2", "typo")]
    with pytest.raises(StaleData):
        ae_svc.update_adverse_event(coord, ae_id, AE, reason="x", expected_version=version)


def test_becoming_serious_on_correction_starts_the_clock(coord, subject):
    ae_id = ae_svc.record_adverse_event(coord, subject, replace(SAE, serious="N", criteria=[]))
    assert ae_svc.open_sae_alerts(coord) == []
    coord.clock = lambda: NOW + timedelta(hours=2)
    ae_svc.update_adverse_event(coord, ae_id, SAE, reason="hospitalised overnight")
    [alert] = ae_svc.open_sae_alerts(coord)
    assert alert.deadline == NOW + timedelta(hours=26)


# --- dosing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("trip, ok, field, rule", [
    (dict(dose_mg="0"), dict(dose_mg="0.1"), "dose_mg", "positive"),
    (dict(dose_mg="-0.1"), dict(dose_mg="0.2"), "dose_mg", "positive"),
    (dict(dose_mg="abc"), dict(dose_mg="0.15"), "dose_mg", "number"),
    (dict(time="25:00"), dict(time="23:00"), "time", "time"),
    (dict(lot="L1\x07"), dict(lot="L1"), "lot", "control_characters"),
])
def test_dose_rule_refuses_and_writes_nothing(study, coord, subject, trip, ok, field, rule):
    with pytest.raises(ValidationFailed) as exc:
        dose_svc.record_dose(coord, subject, replace(DOSE, **trip))
    assert [(e.field, e.rule) for e in exc.value.errors] == [(field, rule)]
    assert count(study, DosingRecord) == 0 and audit(study, "dose") == []
    dose_svc.record_dose(coord, subject, replace(DOSE, **ok))
    assert count(study, DosingRecord) == 1


def test_never_randomised_subject_cannot_be_dosed(study, coord, subject):
    screening = enrol(coord, "S01-002", baseline=None)
    with pytest.raises(ValidationFailed) as exc:
        dose_svc.record_dose(coord, screening, DOSE)
    assert ("subject", "not_randomised") in [(e.field, e.rule) for e in exc.value.errors]
    with pytest.raises(ValidationFailed):
        dose_svc.record_usual_day(coord, screening, date(2026, 9, 3), time(8), "L1")
    assert count(study, DosingRecord) == 0
    assert dose_svc.record_dose(coord, subject, DOSE).findings == []


@pytest.mark.parametrize("trip, ok, rule", [
    (dict(dose_mg="0.5"), dict(dose_mg="0.3"), "dose_range"),
    (dict(dose_mg="0.3", instillations="5"), dict(dose_mg="0.3", instillations="4"),
     "daily_max"),
])
def test_dose_finding_saves_and_opens_a_query(study, coord, subject, trip, ok, rule):
    out = dose_svc.record_dose(coord, subject, replace(DOSE, **trip))
    assert rule in [f.rule for f in out.findings] and out.queries_opened
    [q] = queries(study, rule)
    assert (q.origin, q.state, q.row_index, q.form_instance_id) == ("auto", "open", out.id,
                                                                    None)
    assert q.item_id == "dose_mg" and q.messages[0].text == out.queries_opened[
        [f.rule for f in out.findings].index(rule)]
    [row] = dose_svc.list_doses(coord, subject)
    assert rule in row.findings and row.open_queries
    clean = enrol(coord, "S01-002")
    assert dose_svc.record_dose(coord, clean, replace(DOSE, **ok)).findings == []


def test_correcting_the_dose_closes_its_query(study, coord, subject):
    out = dose_svc.record_dose(coord, subject, replace(DOSE, dose_mg="0.5"))
    row = dose_svc.list_doses(coord, subject)[0]
    with pytest.raises(ReasonRequired):
        dose_svc.update_dose(coord, out.id, DOSE, expected_version=row.row_version)
    fixed = dose_svc.update_dose(coord, out.id, DOSE, reason="0.5 was a slip",
                                 expected_version=row.row_version)
    assert fixed.findings == [] and len(fixed.queries_closed) == 1 and fixed.changed == [
        "dose_mg"]
    assert [q.state for q in queries(study)] == ["closed"]
    assert dose_svc.list_doses(coord, subject)[0].open_queries == ()
    with pytest.raises(StaleData):
        dose_svc.update_dose(coord, out.id, DOSE, reason="x", expected_version=row.row_version)
    change = [(e.field, e.old_value, e.new_value, e.reason) for e in audit(study, "dose")
              if e.action == "update"]
    assert ("dose_mg", "0.5", "0.1", "0.5 was a slip") in change


def test_after_18_is_a_warning_not_a_query(study, coord, subject):
    out = dose_svc.record_dose(coord, subject, replace(DOSE, time="18:30"))
    assert [w.rule for w in out.warnings] == ["late_dose"] and out.findings == []
    assert queries(study) == []
    assert dose_svc.list_doses(coord, subject)[0].warnings == ("late_dose",)
    assert dose_svc.record_dose(coord, subject, replace(DOSE, time="18:00")).warnings == []


def test_course_too_long_opens_a_query(study, coord, subject):
    dose_svc.record_dose(coord, subject, DOSE)
    ok = dose_svc.record_dose(coord, subject, replace(DOSE, date="2026-09-15"))  # day 14
    assert ok.findings == []
    out = dose_svc.record_dose(coord, subject, replace(DOSE, date="2026-09-16"))  # day 15
    assert [f.rule for f in out.findings] == ["course_too_long"]
    assert [q.rule for q in queries(study)] == ["course_too_long"]


@pytest.fixture
def cyclic_coord(tmp_path, protocol, form_definitions):
    """A study whose NA-Semax arm follows the cyclic (neurodegenerative) regimen."""
    from crf_app.services.accounts import login
    from crf_app.services.context import open_new_database
    from crf_app.services.setup import NewUser, add_user, create_study
    from crf_app.storage.audit import SYSTEM

    cyclic = protocol.model_copy(update={"arms": [
        ArmDef(code="NSX", name="NA-Semax cyclic", regimen="neurodegenerative-cyclic")]})
    db = open_new_database(f"sqlite:///{tmp_path / 'cyclic.db'}")
    handle = create_study(db, cyclic, form_definitions,
                          admin=NewUser("admin", "Ada Admin", Role.ADMIN, PASSWORD))
    add_user(db, SYSTEM, NewUser("coord", "Cy Coordinator", Role.COORDINATOR, PASSWORD, "S01"))
    ctx = login(handle, "coord", PASSWORD)
    ctx.clock = fixed_clock()
    yield ctx
    handle.close()


def test_washout_opens_a_query_on_a_cyclic_regimen(cyclic_coord):
    ctx = cyclic_coord
    sid = enrol(ctx, baseline=date(2026, 6, 1), consent=date(2026, 5, 30))
    for day in range(10):
        dose_svc.record_dose(ctx, sid, replace(DOSE, date=f"2026-06-{day + 1:02d}"))
    # 30 dose-free days after 10 June: 11 July starts the next course without a finding …
    assert dose_svc.record_dose(ctx, sid, replace(DOSE, date="2026-07-11")).findings == []
    # … whereas 20 June falls in the washout.
    out = dose_svc.record_dose(ctx, sid, replace(DOSE, date="2026-06-20"))
    assert "washout" in [f.rule for f in out.findings]
    with ctx.study.db.reading() as s:
        rules = s.execute(select(Query.rule).where(Query.target == "dose")).scalars().all()
    assert "washout" in rules
    comp = dose_svc.subject_compliance(ctx, sid)
    assert len(comp.courses) == 3


def test_usual_day_saves_every_administration_at_once(study, coord, subject):
    outs = dose_svc.record_usual_day(coord, subject, date(2026, 9, 2), time(8), "L2026-01")
    rows = dose_svc.list_doses(coord, subject)
    assert len(outs) == len(rows) == 2  # the stroke regimen: at least 2 a day
    assert [(r.time, r.nostril, r.dose_mg, r.study_day) for r in rows] == [
        (time(8), "LEFT", dose_svc.Decimal("0.1"), 1), (time(12), "RIGHT",
                                                        dose_svc.Decimal("0.1"), 1)]
    with pytest.raises(ValidationFailed, match="already has 2"):
        dose_svc.record_usual_day(coord, subject, date(2026, 9, 2), time(8), "L2026-01")
    with pytest.raises(ValidationFailed, match="18:00"):
        dose_svc.record_usual_day(coord, subject, date(2026, 9, 3), time(19), "L2026-01")


def test_refused_usual_day_leaves_no_rows(study, coord, subject):
    before = count(study, AuditEvent)
    with pytest.raises(ValidationFailed) as exc:
        dose_svc.record_usual_day(coord, subject, date(2026, 9, 3), time(8), "L\t1")
    assert {e.rule for e in exc.value.errors} == {"control_characters"}
    assert count(study, DosingRecord) == 0 and count(study, AuditEvent) == before


def test_compliance_counts_planned_days_from_baseline(coord):
    sid = enrol(coord, "S01-003", baseline=date(2026, 11, 18), consent=date(2026, 11, 17))
    for d in (18, 19, 20):
        dose_svc.record_usual_day(coord, sid, date(2026, 11, d), time(8), "L1")
    dose_svc.record_dose(coord, sid, DoseInput(date="2026-11-21", missed=True,
                                               missed_reason="Forgot"))
    comp = dose_svc.subject_compliance(coord, sid)
    assert (comp.planned, comp.given, comp.percent) == (14, 6, 42.9)  # 7 days × 2
    [course] = comp.courses
    assert course.missed_records == 1 and course.start == date(2026, 11, 18)
    assert "6 of 14" in comp.label
    timeline = reports.subject_timeline(coord, sid)
    assert [d.instillations for d in timeline.days] == [2, 2, 2, 0]
    assert timeline.days[-1].missed == 1 and timeline.first == date(2026, 11, 18)


def test_compliance_stops_when_the_subject_leaves(study, coord):
    sid = enrol(coord, "S01-004", baseline=date(2026, 11, 10), consent=date(2026, 11, 9))
    dose_svc.record_usual_day(coord, sid, date(2026, 11, 10), time(8), "L1")
    assert dose_svc.subject_compliance(coord, sid).planned == 14  # 7 days × 2, as of today
    svc.end_participation(coord, sid, SubjectStatus.WITHDRAWN, date(2026, 11, 12), "moved")
    comp = dose_svc.subject_compliance(coord, sid)
    assert (comp.planned, comp.given) == (6, 2)  # 10–12 November
    [row] = reports.compliance_rows(study, today=date(2026, 11, 24))
    assert (row.planned, row.given, row.status) == (6, 2, "Withdrawn")


# --- reports --------------------------------------------------------------------------------
def test_reports_ae_table_sae_list_and_compliance(study, coord, subject):
    ae_svc.record_adverse_event(coord, subject, AE)
    ae_svc.record_adverse_event(coord, subject, replace(AE, grade="2", severity="MODERATE"))
    ae_svc.record_adverse_event(coord, subject, SAE)
    dose_svc.record_usual_day(coord, subject, date(2026, 9, 2), time(8), "L1")
    rows = reports.ae_table_rows(study)
    headache = next(r for r in rows if r.term == "HEADACHE")
    assert headache.by_grade == (1, 1, 0, 0, 0) and headache.serious == 0
    assert rows[-1].label == "Any adverse event" and rows[-1].total == 3
    text = reports.report_main(study, "ae", None, False, now=NOW)
    assert "Headache" in text and "Dizziness" in text and "24 h 00 min left" in text
    csv_text = reports.report_main(study, "ae", "S01", True, now=NOW)
    assert csv_text.splitlines()[0].startswith("site,term,label,grade_1")
    assert "S01,HEADACHE,Headache,1,1,0,0,0,2,0" not in csv_text  # one site: no site blocks
    assert "ALL,HEADACHE,Headache,1,1,0,0,0,2,0" in csv_text
    assert reports.report_main(study, "ae", "S02", False, now=NOW).count("No ") == 2
    [sae] = reports.sae_list(study, now=NOW)
    assert sae.subject == "S01-001" and sae.relationship == "awaiting assessment"
    comp = reports.compliance_rows(study, today=date(2026, 9, 8))
    assert [(c.subject, c.planned, c.given, c.percent) for c in comp] == [
        ("S01-001", 14, 2, 14.3)]
    assert "S01-001" in reports.report_main(study, "compliance", None, False, now=NOW)
    assert reports.report_main(study, "compliance", None, True, now=NOW).startswith(
        "subject,site,arm")
    with pytest.raises(ValidationFailed, match="site"):
        reports.report_main(study, "ae", "S99", False)
    with pytest.raises(ValidationFailed, match="Report must be"):
        reports.report_main(study, "nonsense", None, False)


def test_audit_chain_holds_after_every_kind_of_write(study, coord, inv, subject):
    ae_id = ae_svc.record_adverse_event(coord, subject, SAE)
    ae_svc.update_adverse_event(inv, ae_id, replace(SAE, relationship="UNLIKELY"))
    ae_svc.mark_sae_reported(coord, ae_id, datetime(2026, 11, 24, 9, tzinfo=UTC))
    out = dose_svc.record_dose(coord, subject, replace(DOSE, dose_mg="0.5"))
    dose_svc.update_dose(coord, out.id, DOSE, reason="slip")
    dose_svc.record_usual_day(coord, subject, date(2026, 9, 3), time(8), "L1")
    report = verify_audit(study.db)
    assert report.ok and report.events_checked > 40
    assert {e.entity for e in audit(study, "query")} == {"query"}
