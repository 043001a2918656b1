"""Source data verification, electronic signatures and locking, through the services."""

from datetime import date

import pytest
from sqlalchemy import select

from crf_app.domain.errors import (
    AuthenticationFailed,
    LockedData,
    PermissionDenied,
    ValidationFailed,
)
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.services import forms as fsvc
from crf_app.services import signoff
from crf_app.services import subjects as svc
from crf_app.services.audit_trail import audit_history
from crf_app.storage.models import FormInstance
from tests.conftest import PASSWORD, fixed_clock

VITALS = {"SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6", "WEIGHT": "80.0",
          "HEIGHT": "180"}


@pytest.fixture
def roles(as_role):
    out = {}
    for role in Role:
        ctx = as_role(role)
        ctx.clock = fixed_clock()
        out[role] = ctx
    return out


@pytest.fixture
def complete_form(roles):
    coord = roles[Role.COORDINATOR]
    sid = svc.enroll_subject(coord, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                               date(2026, 11, 1), date(2026, 11, 1)))
    vid = svc.subject_detail(coord, sid).visits[0].id
    fsvc.save_form(coord, vid, "vital_signs", VITALS, complete=True)
    return sid, vid


def test_verification_is_removed_by_a_later_change(roles, complete_form, study):
    sid, vid = complete_form
    mon, coord = roles[Role.MONITOR], roles[Role.COORDINATOR]
    with pytest.raises(PermissionDenied):
        signoff.verify_form(coord, vid, "vital_signs")
    signoff.verify_form(mon, vid, "vital_signs")
    with pytest.raises(ValidationFailed, match="already verified"):
        signoff.verify_form(mon, vid, "vital_signs")
    assert [(p.complete_forms, p.verified_forms) for p in signoff.sdv_progress(mon)] == [(1, 1)]
    assert fsvc.form_matrix(mon, sid).cells[(vid, "vital_signs")].status == "verified"
    out = fsvc.save_form(coord, vid, "vital_signs", dict(VITALS, PULSE="70"), complete=True,
                         reason="typo")
    assert "source data verification removed" in out.undone
    assert [(p.complete_forms, p.verified_forms) for p in signoff.sdv_progress(mon)] == [(1, 0)]
    events = [r for r in audit_history(mon, subject_id=sid) if r.entity == "verification"]
    assert [(e.old, e.new) for e in events] == [("verified", "cleared"), (None, "verified")]


def test_signature_needs_the_password_and_is_invalidated_by_change(roles, complete_form):
    sid, vid = complete_form
    inv, coord = roles[Role.INVESTIGATOR], roles[Role.COORDINATOR]
    with pytest.raises(PermissionDenied):
        signoff.sign(coord, sid, scope="casebook", password=PASSWORD,
                     meaning="Reviewed and approved")
    with pytest.raises(AuthenticationFailed, match="wrong password"):
        signoff.sign(inv, sid, scope="casebook", password="not-my-password1",
                     meaning="Reviewed and approved")
    assert signoff.signature_manifest(inv, sid) == []
    sig_id = signoff.sign(inv, sid, scope="casebook", password=PASSWORD,
                          meaning="Reviewed and approved")
    [row] = signoff.signature_manifest(inv, sid)
    assert (row.id, row.state, row.printed_name, row.meaning, row.forms_signed) == (
        sig_id, "valid", "Investigator Test", "Reviewed and approved", 1)
    assert len(row.values_hash) == 64 and row.signed_at.tzinfo is not None
    assert fsvc.form_matrix(inv, sid).cells[(vid, "vital_signs")].status == "signed"
    out = fsvc.save_form(coord, vid, "vital_signs", dict(VITALS, TEMP="36.9"), complete=True,
                         reason="re-measured")
    assert any("signature" in u for u in out.undone)
    [row] = signoff.signature_manifest(inv, sid)
    assert row.state == "invalidated" and row.invalidated_reason == "signed data changed"


def test_signing_the_same_values_gives_the_same_hash(roles, complete_form, study):
    sid, vid = complete_form
    with study.db.reading() as s:
        fi = s.execute(select(FormInstance.id)).scalar_one()
        h1 = signoff.signed_values_hash(s, sid, [fi])
        h2 = signoff.signed_values_hash(s, sid, [fi])
    assert h1 == h2
    fsvc.save_form(roles[Role.COORDINATOR], vid, "vital_signs", dict(VITALS, PULSE="71"),
                   complete=True, reason="x")
    with study.db.reading() as s:
        assert signoff.signed_values_hash(s, sid, [fi]) != h1


def test_locked_data_cannot_be_changed_until_unlocked(roles, complete_form, study):
    sid, vid = complete_form
    dm, coord = roles[Role.DATA_MANAGER], roles[Role.COORDINATOR]
    with pytest.raises(PermissionDenied):
        signoff.lock(roles[Role.MONITOR], "subject", sid, "database lock")
    lock_id = signoff.lock(dm, "subject", sid, "interim analysis")
    with pytest.raises(LockedData, match="locked"):
        fsvc.save_form(coord, vid, "vital_signs", dict(VITALS, PULSE="70"), reason="x")
    with pytest.raises(ValidationFailed, match="reason"):
        signoff.unlock(dm, lock_id, "")
    signoff.unlock(dm, lock_id, "query resolution needed")
    fsvc.save_form(coord, vid, "vital_signs", dict(VITALS, PULSE="70"), reason="x")
    with study.db.reading() as s:
        fi = s.execute(select(FormInstance.id)).scalar_one()
    signoff.lock(dm, "form", fi, "form frozen")
    assert fsvc.form_matrix(dm, sid).cells[(vid, "vital_signs")].status == "locked"
    with pytest.raises(LockedData):
        fsvc.save_form(coord, vid, "vital_signs", VITALS, reason="x")


def test_a_locked_subject_refuses_log_entries_too(roles, complete_form):
    from crf_app.domain.adverse_events import AeInput
    from crf_app.services.adverse_events import record_adverse_event

    sid, _vid = complete_form
    signoff.lock(roles[Role.DATA_MANAGER], "subject", sid, "database lock")
    with pytest.raises(LockedData):
        record_adverse_event(roles[Role.COORDINATOR], sid, AeInput(
            term="HEADACHE", start_date="2026-11-20", ongoing=True, severity="MILD", grade="1",
            serious="N", action="NONE", outcome="NOT_RECOVERED"))


def test_active_locks_cover_subject_site_and_forms(roles, complete_form, study):
    sid, _vid = complete_form
    dm = roles[Role.DATA_MANAGER]
    assert signoff.active_locks(dm, sid) == []
    with study.db.reading() as s:
        site_id = s.execute(select(FormInstance)).scalar_one().visit.subject.site_id
    a = signoff.lock(dm, "site", site_id, "site closed")
    [row] = signoff.active_locks(dm, sid)
    assert (row.id, row.scope, row.reason) == (a, "site", "site closed")
    signoff.unlock(dm, a, "site re-opened")
    assert signoff.active_locks(dm, sid) == []
