"""Every read model, called as the S01 coordinator of a three-site study, returns no S02 or
S03 row, and asking for another site's record by id is refused."""

from __future__ import annotations

import csv
from datetime import date

import pytest

from crf_app.domain.adverse_events import AeInput
from crf_app.domain.errors import PermissionDenied
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.services import adverse_events as ae_svc
from crf_app.services import dosing as dose_svc
from crf_app.services import forms as form_svc
from crf_app.services import queries, signoff
from crf_app.services import subjects as subj_svc
from crf_app.services.accounts import login
from crf_app.services.audit_trail import audit_history, export_audit_csv
from crf_app.services.csv_service import prepare_csv
from crf_app.services.dashboard import dashboard
from crf_app.services.odm_import import list_conflicts
from crf_app.services.reports import subject_timeline
from crf_app.services.setup import NewUser, add_user
from crf_app.storage.audit import SYSTEM
from tests.conftest import PASSWORD, fixed_clock

VITALS = {"SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6", "WEIGHT": "80.0",
          "HEIGHT": "180"}
SAE = AeInput(term="DIZZINESS", start_date="2026-11-10", severity="SEVERE", grade="3",
              serious="Y", criteria=["HOSPITALISATION"], ongoing=True, action="NONE",
              outcome="RECOVERING", relationship="POSSIBLE")


@pytest.fixture
def three_sites(study, as_role):
    """One subject per site, each with a complete verified form, an open query and an SAE."""
    add_user(study.db, SYSTEM, NewUser("inv_all", "Investigator All", Role.INVESTIGATOR,
                                       PASSWORD))
    inv = login(study, "inv_all", PASSWORD)
    mon = as_role(Role.MONITOR)
    for ctx in (inv, mon):
        ctx.clock = fixed_clock()
    ids = {}
    for site in ("S01", "S02", "S03"):
        sid = subj_svc.enroll_subject(inv, Enrollment(
            f"{site}-001", site, "ABC", 1960, "F", "NSX", date(2026, 11, 1), date(2026, 11, 1),
            date(2026, 11, 2)))
        scr = subj_svc.subject_detail(inv, sid).visits[0].id
        form_svc.save_form(inv, scr, "vital_signs", VITALS, complete=True)
        signoff.verify_form(mon, scr, "vital_signs")
        qid = queries.raise_query(mon, scr, "vital_signs", "PULSE", f"Check {site}")
        ae_svc.record_adverse_event(inv, sid, SAE)
        ids[site] = (sid, scr, qid)
    coord = as_role(Role.COORDINATOR)  # bound to S01
    coord.clock = fixed_clock()
    return coord, ids


def test_lists_hold_only_the_callers_site(three_sites, tmp_path):
    coord, _ids = three_sites
    assert {r.site for r in subj_svc.list_subjects(coord)} == {"S01"}
    assert {r.site for r in queries.list_queries(coord)} == {"S01"}
    assert {r.site for r in ae_svc.open_sae_alerts(coord)} == {"S01"}
    assert {r.site for r in signoff.sdv_progress(coord)} == {"S01"}
    assert list_conflicts(coord) == []
    board = dashboard(coord)
    assert set(board.enrolment) == {"S01"}
    assert [subject for subject, _ in board.completion] == ["S01-001"]
    assert sum(n for _, n in board.queries_by_age) == 1
    events = audit_history(coord)
    assert events and all(e.entity_id.startswith("S01") or e.entity in (
        "query", "verification", "signature") for e in events)
    assert not any("S02" in (e.entity_id + e.reason) or "S03" in (e.entity_id + e.reason)
                   for e in events)
    n = export_audit_csv(coord, tmp_path / "audit.csv", batch=7)  # several batches
    with open(tmp_path / "audit.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert n == len(rows) == len(events)
    assert not any("S02" in r["entity_id"] or "S03" in r["entity_id"] for r in rows)
    add_user(coord.study.db, SYSTEM, NewUser("mon1", "Monitor One", Role.MONITOR, PASSWORD,
                                             "S01"))
    plan = prepare_csv(login(coord.study, "mon1", PASSWORD))
    assert plan.subject_count == 1
    plan.close()


def test_a_site_bound_user_asking_for_another_site_is_refused(three_sites):
    coord, ids = three_sites
    sid, scr, qid = ids["S02"]
    for read in (lambda: queries.list_queries(coord, site="S02"),
                 lambda: queries.query_thread(coord, qid),
                 lambda: form_svc.form_matrix(coord, sid),
                 lambda: form_svc.open_form(coord, scr, "vital_signs"),
                 lambda: subj_svc.subject_detail(coord, sid),
                 lambda: signoff.signature_manifest(coord, sid),
                 lambda: signoff.active_locks(coord, sid),
                 lambda: ae_svc.list_adverse_events(coord, sid),
                 lambda: dose_svc.list_doses(coord, sid),
                 lambda: dose_svc.subject_compliance(coord, sid),
                 lambda: subject_timeline(coord, sid)):
        with pytest.raises(PermissionDenied, match="works at site S01"):
            read()
    own_sid, own_scr, own_qid = ids["S01"]
    assert [m.text for m in queries.query_thread(coord, own_qid)] == ["Check S01"]
    assert form_svc.form_matrix(coord, own_sid).cells[(own_scr, "vital_signs")].status == \
        "verified"


def test_the_whole_study_audit_csv_holds_every_event_across_batches(three_sites, as_role,
                                                                     tmp_path):
    dm = as_role(Role.DATA_MANAGER)  # not bound to a site: the whole trail
    n = export_audit_csv(dm, tmp_path / "all.csv", batch=5)
    with open(tmp_path / "all.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    ids = [int(r["event_id"]) for r in rows]
    assert n == len(rows) > 5 * 10 and ids == list(range(1, n + 1))
