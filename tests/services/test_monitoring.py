"""Queries, the audit-trail reader, account unlock, and the role × action matrix."""

import csv
from datetime import date

import pytest

from crf_app.domain.errors import (
    AuthenticationFailed,
    PermissionDenied,
    ValidationFailed,
)
from crf_app.domain.roles import Action, Role, allowed
from crf_app.domain.subjects import Enrollment
from crf_app.services import accounts
from crf_app.services import forms as fsvc
from crf_app.services import queries as qsvc
from crf_app.services import subjects as svc
from crf_app.services.audit_trail import audit_history, export_audit_csv
from crf_app.services.setup import NewUser
from tests.conftest import PASSWORD, fixed_clock

VITALS = {"SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6", "WEIGHT": "80.0",
          "HEIGHT": "180"}


@pytest.fixture
def roles(as_role):
    ctxs = {}
    for role in Role:
        ctx = as_role(role)
        ctx.clock = fixed_clock()
        ctxs[role] = ctx
    return ctxs


@pytest.fixture
def saved_form(roles):
    coord = roles[Role.COORDINATOR]
    sid = svc.enroll_subject(coord, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                               date(2026, 11, 1), date(2026, 11, 1)))
    vid = svc.subject_detail(coord, sid).visits[0].id
    fsvc.save_form(coord, vid, "vital_signs", VITALS)
    return sid, vid


def test_query_cycle_with_thread_and_age(roles, saved_form):
    sid, vid = saved_form
    mon, coord = roles[Role.MONITOR], roles[Role.COORDINATOR]
    qid = qsvc.raise_query(mon, vid, "vital_signs", "PULSE", "Source says 78 — please check")
    assert [q.state for q in qsvc.list_queries(mon, subject_id=sid)] == ["open"]
    qsvc.answer_query(coord, qid, "Corrected from source")
    with pytest.raises(PermissionDenied):
        qsvc.close_query(coord, qid, "closing my own answer")
    qsvc.close_query(mon, qid, "Resolved")
    with pytest.raises(ValidationFailed, match="closed"):
        qsvc.close_query(mon, qid, "again")
    qsvc.reopen_query(mon, qid, "Still differs from the source")
    thread = qsvc.query_thread(mon, qid)
    assert [m.kind for m in thread] == ["open", "answer", "close", "reopen"]
    assert [m.by for m in thread] == ["mon", "coord", "mon", "mon"]
    later = roles[Role.MONITOR]
    later.clock = fixed_clock(2026, 12, 4)
    row = qsvc.list_queries(later, min_age_days=10)[0]
    assert (row.id, row.state, row.age_days, row.item_id) == (qid, "open", 10, "PULSE")
    assert qsvc.list_queries(later, min_age_days=11) == []
    assert qsvc.list_queries(later, origin="auto") == []
    assert len(qsvc.list_queries(later, site="S01", state="open")) == 1
    assert qsvc.list_queries(later, site="S02") == []


def test_bad_query_input(roles, saved_form):
    _sid, vid = saved_form
    mon = roles[Role.MONITOR]
    with pytest.raises(ValidationFailed, match="message is required"):
        qsvc.raise_query(mon, vid, "vital_signs", "PULSE", "   ")
    with pytest.raises(ValidationFailed, match="no item"):
        qsvc.raise_query(mon, vid, "vital_signs", "NOPE", "text")
    with pytest.raises(PermissionDenied):
        qsvc.raise_query(roles[Role.COORDINATOR], vid, "vital_signs", "PULSE", "text")


def test_audit_history_and_csv_export(roles, saved_form, tmp_path):
    sid, vid = saved_form
    coord = roles[Role.COORDINATOR]
    fsvc.save_form(coord, vid, "vital_signs", dict(VITALS, PULSE="70"), reason="typo")
    rows = audit_history(roles[Role.MONITOR], subject_id=sid, field="PULSE")
    assert [(r.old, r.new, r.reason) for r in rows] == [("72", "70", "typo"), (None, "72", "")]
    by_form = audit_history(roles[Role.MONITOR], entity_prefix="S01-001/SCR/vital_signs")
    assert {r.field for r in by_form} >= {"SYSBP", "PULSE", "status"}
    n = export_audit_csv(roles[Role.DATA_MANAGER], tmp_path / "audit.csv")
    with open(tmp_path / "audit.csv", encoding="utf-8") as fh:
        lines = list(csv.reader(fh))
    assert len(lines) == n + 1 and lines[0][0] == "event_id"
    assert any(line[6] == "PULSE" and line[9] == "typo" for line in lines)


def test_locked_account_is_unlocked_by_an_admin(study, roles):
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            accounts.login(study, "coord", "wrong-password-1")
    with pytest.raises(AuthenticationFailed, match="locked"):
        accounts.login(study, "coord", PASSWORD)
    with pytest.raises(PermissionDenied):
        accounts.unlock_user(roles[Role.MONITOR], "coord", "asked by phone")
    accounts.unlock_user(roles[Role.ADMIN], "coord", "identity checked by phone")
    assert accounts.login(study, "coord", PASSWORD).user.username == "coord"


# The whole role × action matrix, run against the services themselves.
def _enrol(ctx, n):
    return svc.enroll_subject(ctx, Enrollment(f"S01-1{n:02d}", "S01", "ABC", 1960, "F", "NSX",
                                              date(2026, 11, 1), date(2026, 11, 1)))


ACTIONS = {
    Action.ENROLL: lambda ctx, env, n: _enrol(ctx, n),
    Action.EDIT_DATA: lambda ctx, env, n: fsvc.save_form(ctx, env["vid"], "vital_signs",
                                                         dict(VITALS, PULSE=str(60 + n)),
                                                         reason="matrix"),
    Action.CHANGE_STATUS: lambda ctx, env, n: svc.end_participation(
        ctx, env["spare"][n], "withdrawn", date(2026, 11, 20), "matrix"),
    Action.RAISE_QUERY: lambda ctx, env, n: qsvc.raise_query(ctx, env["vid"], "vital_signs",
                                                             "PULSE", "matrix"),
    Action.ANSWER_QUERY: lambda ctx, env, n: qsvc.answer_query(ctx, env["queries"][n], "ok"),
    Action.CLOSE_QUERY: lambda ctx, env, n: qsvc.close_query(ctx, env["queries"][n], "ok"),
    Action.MANAGE_USERS: lambda ctx, env, n: accounts.create_user(
        ctx, NewUser(f"user{n}", "New User", Role.MONITOR, PASSWORD)),
    Action.VIEW_AUDIT: lambda ctx, env, n: audit_history(ctx, limit=1),
}


def test_role_action_matrix(roles, saved_form):
    _sid, vid = saved_form
    coord, mon = roles[Role.COORDINATOR], roles[Role.MONITOR]
    spare = [_enrol(coord, 50 + i) for i in range(len(Role))]
    queries = [qsvc.raise_query(mon, vid, "vital_signs", "PULSE", f"q{i}")
               for i in range(len(Role))]
    env = {"vid": vid, "spare": spare, "queries": queries}
    outcomes = {}
    for n, role in enumerate(Role):
        for action, call in ACTIONS.items():
            try:
                call(roles[role], env, n)
                outcomes[(role, action)] = True
            except PermissionDenied:
                outcomes[(role, action)] = False
    expected = {(r, a): allowed(r, a) for r in Role for a in ACTIONS}
    assert outcomes == expected
    # spot-check the policy itself, as the issue states it
    assert not allowed(Role.MONITOR, Action.EDIT_DATA)
    assert not allowed(Role.COORDINATOR, Action.SIGN) and allowed(Role.INVESTIGATOR, Action.SIGN)
    assert allowed(Role.DATA_MANAGER, Action.LOCK) and not allowed(Role.MONITOR, Action.LOCK)


def test_refused_attempts_are_logged_in_the_audit_trail(roles, saved_form):
    _sid, vid = saved_form
    with pytest.raises(PermissionDenied):
        fsvc.save_form(roles[Role.MONITOR], vid, "vital_signs", dict(VITALS, PULSE="99"),
                       reason="monitor edit")
    with pytest.raises(PermissionDenied):
        svc.enroll_subject(roles[Role.MONITOR], Enrollment("S01-009", "S01", "ABC", 1960, "F",
                                                           "NSX", date(2026, 11, 1),
                                                           date(2026, 11, 1)))
    refusals = [r for r in audit_history(roles[Role.DATA_MANAGER], user="mon")
                if r.action == "permission_denied"]
    assert [r.field for r in refusals] == ["enroll", "edit_data"]
    assert fsvc.open_form(roles[Role.MONITOR], vid, "vital_signs").raw["PULSE"] == "72"
