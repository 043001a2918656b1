"""A change voids exactly the signatures and verifications that cover it, and nothing else.

The rule, written out: a form signature covers its form; a visit signature the forms of the
visit and the visit date; a casebook signature everything of the subject (forms, visit dates,
AE log, dosing log, baseline, arm, status); a verification its form.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select

from crf_app.domain.adverse_events import AeInput
from crf_app.domain.coverage import Content, ContentChange, Cover, covers
from crf_app.domain.dosing import DoseInput
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.integrity import verify_audit
from crf_app.services import adverse_events as ae_svc
from crf_app.services import dosing as dose_svc
from crf_app.services import forms as form_svc
from crf_app.services import signoff
from crf_app.services import subjects as subj_svc
from crf_app.services.pipeline import Changes, listen
from crf_app.storage.signoff_models import Signature, Verification
from tests.conftest import PASSWORD, fixed_clock

VITALS = {"VSTIM": "09:30", "SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6",
          "WEIGHT": "80.0", "HEIGHT": "180"}
AE = AeInput(term="HEADACHE", start_date="2026-11-10", end_date="2026-11-11", severity="MILD",
             grade="1", serious="N", action="NONE", outcome="RECOVERED")
DOSE = DoseInput(date="2026-11-05", time="08:00", dose_mg="0.1", instillations="1",
                 nostril="LEFT", lot="L2026-01", given_by="SELF")
ALL = {"form:vital_signs", "form:mrs", "visit:SCR", "casebook", "sdv:vital_signs", "sdv:mrs"}


@pytest.fixture
def signed(as_role):
    """S01-001: screening vitals and mRS complete, each verified and form-signed; the
    screening visit signed; the casebook signed. S01-002 enrolled beside it."""
    users = {}
    for role in Role:
        users[role] = as_role(role)
        users[role].clock = fixed_clock()
    coord, inv, mon = users[Role.COORDINATOR], users[Role.INVESTIGATOR], users[Role.MONITOR]
    sid = subj_svc.enroll_subject(coord, Enrollment(
        "S01-001", "S01", "ABC", 1960, "F", "NSX", date(2026, 10, 25), date(2026, 10, 25),
        date(2026, 11, 2)))
    other = subj_svc.enroll_subject(coord, Enrollment(
        "S01-002", "S01", "DEF", 1962, "M", "NSX", date(2026, 10, 25), date(2026, 10, 25),
        date(2026, 11, 2)))
    scr = subj_svc.subject_detail(coord, sid).visits[0].id
    other_scr = subj_svc.subject_detail(coord, other).visits[0].id
    subj_svc.record_visit_date(coord, scr, date(2026, 10, 30))
    form_svc.save_form(coord, scr, "vital_signs", VITALS, complete=True)
    form_svc.save_form(coord, scr, "mrs", {"MRS": "2"}, complete=True)
    form_svc.save_form(coord, other_scr, "mrs", {"MRS": "1"}, complete=True)
    ae_id = ae_svc.record_adverse_event(coord, sid, AE)
    dose_id = dose_svc.record_dose(coord, sid, DOSE).id
    for form in ("vital_signs", "mrs"):
        signoff.verify_form(mon, scr, form)
        signoff.sign(inv, sid, scope="form", visit_id=scr, form_id=form, password=PASSWORD,
                     meaning="Reviewed and approved")
    signoff.sign(inv, sid, scope="visit", visit_id=scr, password=PASSWORD,
                 meaning="Reviewed and approved")
    signoff.sign(inv, sid, scope="casebook", password=PASSWORD,
                 meaning="Responsible investigator sign-off")
    return users, sid, scr, ae_id, dose_id, other, other_scr


def _valid(study, sid) -> set[str]:
    """What still stands for the subject: signatures and verifications by what they cover."""
    with study.db.reading() as s:
        out = set()
        for g in s.execute(select(Signature).where(Signature.subject_id == sid,
                                                   Signature.state == "valid")).scalars():
            out.add("casebook" if g.scope == "casebook" else "visit:SCR" if g.scope == "visit"
                    else f"form:{_form_id(s, g.form_instance_id)}")
        for v in s.execute(select(Verification).where(Verification.subject_id == sid,
                                                      Verification.cleared_at.is_(None))
                           ).scalars():
            out.add(f"sdv:{_form_id(s, v.form_instance_id)}")
        return out


def _form_id(s, fi_id):
    from crf_app.storage.models import FormInstance

    return s.get(FormInstance, fi_id).form_id


CASES = {  # change: what it voids
    "a vital sign corrected": (
        lambda u, sid, scr, ae, dose: form_svc.save_form(
            u[Role.COORDINATOR], scr, "vital_signs", dict(VITALS, PULSE="75"), complete=True,
            reason="re-measured"),
        {"form:vital_signs", "visit:SCR", "casebook", "sdv:vital_signs"}),
    "the mRS corrected (the vital signs' signature stays)": (
        lambda u, sid, scr, ae, dose: form_svc.save_form(
            u[Role.COORDINATOR], scr, "mrs", {"MRS": "3"}, complete=True, reason="re-rated"),
        {"form:mrs", "visit:SCR", "casebook", "sdv:mrs"}),
    "two values swapped between items": (
        lambda u, sid, scr, ae, dose: form_svc.save_form(
            u[Role.COORDINATOR], scr, "vital_signs", dict(VITALS, PULSE="82", DIABP="72"),
            complete=True, reason="transposed"),
        {"form:vital_signs", "visit:SCR", "casebook", "sdv:vital_signs"}),
    "a value cleared": (
        lambda u, sid, scr, ae, dose: form_svc.save_form(
            u[Role.COORDINATOR], scr, "vital_signs",
            {k: v for k, v in VITALS.items() if k != "VSTIM"}, complete=True,
            reason="time not in the source"),
        {"form:vital_signs", "visit:SCR", "casebook", "sdv:vital_signs"}),
    "a form put back in progress (same values)": (
        lambda u, sid, scr, ae, dose: form_svc.save_form(
            u[Role.COORDINATOR], scr, "vital_signs", VITALS, complete=False,
            reason="more to add"),
        {"form:vital_signs", "visit:SCR", "casebook", "sdv:vital_signs"}),
    "the visit date corrected": (
        lambda u, sid, scr, ae, dose: subj_svc.record_visit_date(
            u[Role.COORDINATOR], scr, date(2026, 10, 31), "typo"),
        {"visit:SCR", "casebook"}),
    "the baseline date corrected": (
        lambda u, sid, scr, ae, dose: subj_svc.set_baseline(
            u[Role.COORDINATOR], sid, date(2026, 11, 3), "randomised a day later"),
        {"casebook"}),
    "a new adverse event": (
        lambda u, sid, scr, ae, dose: ae_svc.record_adverse_event(
            u[Role.COORDINATOR], sid, replace(AE, term="INSOMNIA")),
        {"casebook"}),
    "an adverse event corrected": (
        lambda u, sid, scr, ae, dose: ae_svc.update_adverse_event(
            u[Role.COORDINATOR], ae, replace(AE, treatment="paracetamol"), "source"),
        {"casebook"}),
    "a new dose": (
        lambda u, sid, scr, ae, dose: dose_svc.record_dose(
            u[Role.COORDINATOR], sid, replace(DOSE, time="20:00")),
        {"casebook"}),
    "a dose corrected": (
        lambda u, sid, scr, ae, dose: dose_svc.update_dose(
            u[Role.COORDINATOR], dose, replace(DOSE, instillations="2"), "diary re-read"),
        {"casebook"}),
    "the subject withdrawn": (
        lambda u, sid, scr, ae, dose: subj_svc.end_participation(
            u[Role.COORDINATOR], sid, "withdrawn", date(2026, 11, 20), "consent withdrawn"),
        {"casebook"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_change_voids_exactly_what_covers_it(signed, study, case):
    users, sid, scr, ae_id, dose_id, _other, _ = signed
    assert _valid(study, sid) == ALL
    seen: list[Changes] = []
    stop = listen(study, seen.append)
    change, voided = CASES[case]
    change(users, sid, scr, ae_id, dose_id)
    stop()
    assert _valid(study, sid) == ALL - voided
    assert len(seen) == 1 and sid in seen[0].subject_ids
    assert len(seen[0].voided) == len(voided)
    assert verify_audit(study.db).ok


def test_a_change_to_another_subject_voids_nothing(signed, study):
    users, sid, _scr, _ae, _dose, other, other_scr = signed
    form_svc.save_form(users[Role.COORDINATOR], other_scr, "mrs", {"MRS": "2"}, complete=True,
                       reason="re-rated")
    ae_svc.record_adverse_event(users[Role.COORDINATOR], other, AE)
    assert _valid(study, sid) == ALL


def test_queries_verifications_and_signatures_void_nothing(signed, study):
    from crf_app.services import queries

    users, sid, scr, *_ = signed
    qid = queries.raise_query(users[Role.MONITOR], scr, "vital_signs", "PULSE", "Confirm?")
    queries.answer_query(users[Role.COORDINATOR], qid, "Confirmed")
    queries.close_query(users[Role.MONITOR], qid, "Thanks")
    signoff.sign(users[Role.INVESTIGATOR], sid, scope="casebook", password=PASSWORD,
                 meaning="Reviewed and approved")
    assert _valid(study, sid) >= ALL


def test_the_rule_in_the_domain():
    form = Cover("form", 1, visit_id=10, form_instance_id=100)
    visit = Cover("visit", 1, visit_id=10)
    book = Cover("casebook", 1)
    sdv = Cover("verification", 1, form_instance_id=100)
    same_form = ContentChange(Content.FORM, 1, 10, 100)
    other_form_same_visit = ContentChange(Content.FORM, 1, 10, 101)
    visit_date = ContentChange(Content.VISIT_DATE, 1, 10)
    other_visit_date = ContentChange(Content.VISIT_DATE, 1, 11)
    for kind in (Content.SUBJECT, Content.ADVERSE_EVENT, Content.DOSE):
        change = ContentChange(kind, 1)
        assert [covers(c, change) for c in (form, visit, book, sdv)] == [
            False, False, True, False]
    assert [covers(c, same_form) for c in (form, visit, book, sdv)] == [True] * 4
    assert [covers(c, other_form_same_visit) for c in (form, visit, book, sdv)] == [
        False, True, True, False]
    assert [covers(c, visit_date) for c in (form, visit, book, sdv)] == [
        False, True, True, False]
    assert [covers(c, other_visit_date) for c in (form, visit, book, sdv)] == [
        False, False, True, False]
    assert not covers(book, ContentChange(Content.FORM, 2, 20, 200))  # another subject


def test_signing_an_incomplete_form_is_refused(signed):
    from crf_app.domain.errors import ValidationFailed

    users, sid, scr, *_ = signed
    form_svc.save_form(users[Role.COORDINATOR], scr, "mrs", {"MRS": "2"}, complete=False,
                       reason="to finish later")
    with pytest.raises(ValidationFailed, match="no complete form"):
        signoff.sign(users[Role.INVESTIGATOR], sid, scope="form", visit_id=scr, form_id="mrs",
                     password=PASSWORD, meaning="Reviewed and approved")


def test_an_sae_clock_does_not_restart_when_the_sae_is_corrected(signed, study):
    users, sid, *_ = signed
    coord = users[Role.COORDINATOR]
    sae = replace(AE, severity="SEVERE", grade="3", serious="Y", criteria=["HOSPITALISATION"],
                  end_date="", ongoing=True, outcome="RECOVERING")
    ae_id = ae_svc.record_adverse_event(coord, sid, sae)
    [first] = [r for r in ae_svc.list_adverse_events(coord, sid) if r.id == ae_id]
    coord.clock = lambda: datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    ae_svc.update_adverse_event(coord, ae_id, replace(sae, treatment="fluids"), "source")
    [after] = [r for r in ae_svc.list_adverse_events(coord, sid) if r.id == ae_id]
    assert after.report_due == first.report_due == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
