"""One door: every registered write action, walked against roles, other sites and locks.

The expected permissions are written out here, literally, as a study's role table would be
(C coordinator, I investigator, M monitor, D data manager, A admin); never read from the
production policy table.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest

import crf_app.services
from crf_app.domain.adverse_events import AeInput
from crf_app.domain.dosing import DoseInput
from crf_app.domain.errors import LockedData, PermissionDenied
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.services import accounts, queries, signoff
from crf_app.services import adverse_events as ae_svc
from crf_app.services import dosing as dose_svc
from crf_app.services import forms as form_svc
from crf_app.services import subjects as subj_svc
from crf_app.services.accounts import login
from crf_app.services.odm_import import import_odm, resolve_conflict
from crf_app.services.pipeline import WRITE_ACTIONS
from crf_app.services.setup import NewUser, add_user
from crf_app.storage.audit import SYSTEM
from crf_app.storage.interchange_models import MergeConflict
from crf_app.storage.models import FormInstance, Site
from tests.conftest import PASSWORD, fixed_clock

# every service module imported, so that every registered action is in WRITE_ACTIONS
for _mod in pkgutil.walk_packages(crf_app.services.__path__, "crf_app.services."):
    importlib.import_module(_mod.name)

ROLE_TABLE = {  # action: the roles allowed to do it
    "enroll_subject": "CI",
    "set_baseline": "CI",
    "record_visit_date": "CI",
    "end_participation": "CI",
    "save_form": "CI",
    "record_adverse_event": "CI",
    "update_adverse_event": "CI",
    "mark_sae_reported": "CI",
    "record_dose": "CI",
    "record_usual_day": "CI",
    "update_dose": "CI",
    "verify_form": "M",
    "sign": "I",
    "lock": "D",
    "unlock": "D",
    "raise_query": "MD",
    "answer_query": "CI",
    "close_query": "MD",
    "reopen_query": "MD",
    "resolve_conflict": "D",
    "import_odm": "DA",
    "create_user": "DA",
    "unlock_user": "DA",
}
# actions that change study data: refused under a form, subject or site lock
DATA_ACTIONS = {"enroll_subject", "set_baseline", "record_visit_date", "end_participation",
                "save_form", "record_adverse_event", "update_adverse_event",
                "mark_sae_reported", "record_dose", "record_usual_day", "update_dose",
                "resolve_conflict", "import_odm"}
# the form-level actions (a form lock applies)
FORM_ACTIONS = {"save_form", "resolve_conflict"}
# account actions are study-wide; the ODM merge's site scope is tested with real files
NOT_SITE_SCOPED = {"create_user", "unlock_user", "import_odm"}
LETTER = {"C": Role.COORDINATOR, "I": Role.INVESTIGATOR, "M": Role.MONITOR,
          "D": Role.DATA_MANAGER, "A": Role.ADMIN}

VITALS = {"SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6", "WEIGHT": "80.0",
          "HEIGHT": "180"}
AE = AeInput(term="DIZZINESS", start_date="2026-11-10", severity="SEVERE", grade="3",
             serious="Y", criteria=["HOSPITALISATION"], ongoing=True, action="NONE",
             outcome="RECOVERING")
DOSE = DoseInput(date="2026-11-05", time="08:00", dose_mg="0.1", instillations="1",
                 nostril="LEFT", lot="L2026-01", given_by="SELF")


@dataclass
class Arena:
    """A study with one subject at S01 in every state the actions need."""

    study: object
    users: dict  # "C", "I", "M", "D", "A" (C and I at S01), "C2", "I2", "M2", "D2" at S02
    sid: int
    scr: int  # the screening visit
    fi_vitals: int
    ae_id: int
    dose_id: int
    query_id: int
    lock_id: int  # on a second subject, for `unlock`
    conflict_id: int
    tmp: Path


def _ctx(study, username):
    ctx = login(study, username, PASSWORD)
    ctx.clock = fixed_clock()
    return ctx


@pytest.fixture
def arena(study, tmp_path):
    for role, letter in ((Role.COORDINATOR, "c"), (Role.INVESTIGATOR, "i"),
                         (Role.MONITOR, "m"), (Role.DATA_MANAGER, "d")):
        add_user(study.db, SYSTEM, NewUser(f"{letter}2", f"{role.label} Two", role,
                                           PASSWORD, "S02"))
    users = {k: _ctx(study, n) for k, n in (("C", "coord"), ("I", "inv"), ("M", "mon"),
                                             ("D", "dm"), ("A", "admin"), ("C2", "c2"),
                                             ("I2", "i2"), ("M2", "m2"), ("D2", "d2"))}
    coord = users["C"]
    sid = subj_svc.enroll_subject(coord, Enrollment(
        "S01-001", "S01", "ABC", 1960, "F", "NSX", date(2026, 11, 1), date(2026, 11, 1),
        date(2026, 11, 2)))
    other = subj_svc.enroll_subject(coord, Enrollment(
        "S01-002", "S01", "DEF", 1961, "M", "NSX", date(2026, 11, 1), date(2026, 11, 1)))
    scr = subj_svc.subject_detail(coord, sid).visits[0].id
    form_svc.save_form(coord, scr, "vital_signs", VITALS, complete=True)
    form_svc.save_form(coord, scr, "mrs", {"MRS": "2"}, complete=True)
    ae_id = ae_svc.record_adverse_event(coord, sid, AE)
    dose_id = dose_svc.record_dose(coord, sid, DOSE).id
    query_id = queries.raise_query(users["M"], scr, "vital_signs", "PULSE", "Please confirm")
    lock_id = signoff.lock(users["D"], "subject", other, "not yet randomised")
    with study.db.transaction() as s:
        fi = s.query(FormInstance).filter_by(visit_id=scr, form_id="vital_signs").one()
        c = MergeConflict(subject_id=sid, visit_id=scr, form_instance_id=fi.id, entity="item",
                          entity_id="S01-001/SCR/vital_signs", field="PULSE", row_index=0,
                          local_value="72", local_user="coord",
                          local_at=datetime(2026, 11, 20, tzinfo=UTC), incoming_value="75",
                          incoming_user="coord", incoming_at=datetime(2026, 11, 21, tzinfo=UTC),
                          file_oid="NASEMAX-PSR-01.X.T00001", state="open",
                          created_at=datetime(2026, 11, 22, tzinfo=UTC))
        s.add(c)
        s.flush()
        fi_id, conflict_id = fi.id, c.id
    return Arena(study, users, sid, scr, fi_id, ae_id, dose_id, query_id, lock_id,
                 conflict_id, tmp_path)


def calls(a: Arena) -> dict:
    """How to call each action on the arena's S01 subject."""
    return {
        "enroll_subject": lambda c: subj_svc.enroll_subject(c, Enrollment(
            "S01-050", "S01", "XYZ", 1955, "M", "NSX", date(2026, 11, 20), date(2026, 11, 20))),
        "set_baseline": lambda c: subj_svc.set_baseline(c, a.sid, date(2026, 11, 3),
                                                        "corrected from the source"),
        "record_visit_date": lambda c: subj_svc.record_visit_date(c, a.scr, date(2026, 11, 1)),
        "end_participation": lambda c: subj_svc.end_participation(
            c, a.sid, "withdrawn", date(2026, 11, 20), "consent withdrawn"),
        "save_form": lambda c: form_svc.save_form(
            c, a.scr, "vital_signs", dict(VITALS, PULSE="75"), complete=True,
            reason="re-measured"),
        "record_adverse_event": lambda c: ae_svc.record_adverse_event(
            c, a.sid, replace(AE, term="HEADACHE")),
        "update_adverse_event": lambda c: ae_svc.update_adverse_event(
            c, a.ae_id, replace(AE, treatment="paracetamol"), "source document"),
        "mark_sae_reported": lambda c: ae_svc.mark_sae_reported(
            c, a.ae_id, datetime(2026, 11, 20, 12, tzinfo=UTC)),
        "record_dose": lambda c: dose_svc.record_dose(c, a.sid, replace(DOSE, time="20:00")),
        "record_usual_day": lambda c: dose_svc.record_usual_day(
            c, a.sid, date(2026, 11, 6), time(8, 0), "L2026-01"),
        "update_dose": lambda c: dose_svc.update_dose(
            c, a.dose_id, replace(DOSE, instillations="2"), "diary re-read"),
        "verify_form": lambda c: signoff.verify_form(c, a.scr, "mrs"),
        "sign": lambda c: signoff.sign(c, a.sid, scope="form", password=PASSWORD,
                                       meaning="Reviewed and approved", visit_id=a.scr,
                                       form_id="vital_signs"),
        "lock": lambda c: signoff.lock(c, "subject", a.sid, "interim analysis"),
        "unlock": lambda c: signoff.unlock(c, a.lock_id, "randomised now"),
        "raise_query": lambda c: queries.raise_query(c, a.scr, "vital_signs", "TEMP",
                                                     "Please confirm"),
        "answer_query": lambda c: queries.answer_query(c, a.query_id, "Confirmed"),
        "close_query": lambda c: queries.close_query(c, a.query_id, "Thank you"),
        "reopen_query": lambda c: queries.reopen_query(c, a.query_id, "Once more"),
        "resolve_conflict": lambda c: resolve_conflict(c, a.conflict_id, "incoming",
                                                       "the source says 75"),
        "import_odm": lambda c: import_odm(c, a.tmp / "no-such-file.xml"),
        "create_user": lambda c: accounts.create_user(c, NewUser(
            "newbie", "New Bie", Role.COORDINATOR, PASSWORD, "S01")),
        "unlock_user": lambda c: accounts.unlock_user(c, "coord", "forgot the password"),
    }


def test_the_registry_lists_every_write_action_and_nothing_else():
    assert set(WRITE_ACTIONS) == set(ROLE_TABLE)
    assert {n for n, a in WRITE_ACTIONS.items() if a.changes_data} == DATA_ACTIONS


def test_the_test_calls_every_registered_action(arena):
    assert set(calls(arena)) == set(WRITE_ACTIONS)


@pytest.mark.parametrize("action", sorted(ROLE_TABLE))
def test_roles_allowed_and_refused(arena, action):
    call = calls(arena)[action]
    for letter, role in LETTER.items():
        ctx = arena.users[letter]
        if letter in ROLE_TABLE[action]:
            try:
                call(ctx)
            except PermissionDenied as exc:  # pragma: no cover - the failure message
                pytest.fail(f"{role.label} was refused {action}: {exc}")
            except Exception:
                pass
        else:
            with pytest.raises(PermissionDenied, match="may not"):
                call(ctx)


@pytest.mark.parametrize("action", sorted(set(ROLE_TABLE) - NOT_SITE_SCOPED))
def test_a_user_of_another_site_is_refused(arena, action):
    ctx = arena.users[ROLE_TABLE[action][0] + "2"]  # the right role, bound to S02
    with pytest.raises(PermissionDenied, match="works at site S02"):
        calls(arena)[action](ctx)


def _lock(arena, scope):
    with arena.study.db.reading() as s:
        site_id = s.query(Site.id).filter_by(code="S01").scalar()
    target = {"form": arena.fi_vitals, "subject": arena.sid, "site": site_id}[scope]
    return signoff.lock(arena.users["D"], scope, target, f"{scope} frozen for the test")


LOCK_CASES = [(action, scope) for action in sorted(DATA_ACTIONS - {"import_odm"})
              for scope in ("form", "subject", "site")
              if (scope != "form" or action in FORM_ACTIONS)  # a form lock: that form only
              and (scope != "subject" or action != "enroll_subject")]  # no subject yet


@pytest.mark.parametrize(("action", "scope"), LOCK_CASES)
def test_every_data_action_is_refused_under_a_lock_naming_it(arena, action, scope):
    lock_id = _lock(arena, scope)
    ctx = arena.users[ROLE_TABLE[action][0]]
    with pytest.raises(LockedData, match=f"lock #{lock_id} by dm: {scope} frozen"):
        calls(arena)[action](ctx)
    signoff.unlock(arena.users["D"], lock_id, "test over")
    calls(arena)[action](ctx)  # accepted once unlocked


def test_a_site_bound_data_manager_locks_only_their_site(arena):
    with pytest.raises(PermissionDenied, match="works at site S02"):
        signoff.lock(arena.users["D2"], "subject", arena.sid, "not mine")
    with pytest.raises(PermissionDenied, match="works at site S02"):
        signoff.unlock(arena.users["D2"], arena.lock_id, "not mine")
