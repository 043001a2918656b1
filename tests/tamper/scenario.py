"""A busy study for the tamper tests: every audited action the app has, on two laptops and a
study created from an ODM file. Everything goes through the services (nothing behind the back).
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from crf_app.domain.errors import AuthenticationFailed, PermissionDenied
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.services import signoff
from crf_app.services.accounts import login
from crf_app.services.adverse_events import (
    ae_input,
    list_adverse_events,
    mark_sae_reported,
    update_adverse_event,
)
from crf_app.services.demo import populate
from crf_app.services.dosing import dose_input, list_doses, update_dose
from crf_app.services.forms import open_form, save_form
from crf_app.services.odm_export import export_odm
from crf_app.services.odm_import import (
    import_new_study,
    import_odm,
    list_conflicts,
    resolve_conflict,
)
from crf_app.services.queries import answer_query, close_query, raise_query, reopen_query
from crf_app.services.setup import NewUser, add_user
from crf_app.services.subjects import (
    enroll_subject,
    list_subjects,
    record_visit_date,
    subject_detail,
)
from crf_app.storage.audit import SYSTEM
from tests.interchange.odm_helpers import PASSWORD, make_laptop

CONMEDS = {"medications": [
    {"CMTRT": "Aspirin", "CMINDC": "Stroke prevention", "CMDOSE": "100", "CMDOSU": "MG",
     "CMROUTE": "PO", "CMDOSFRQ": "QD", "CMSTDTC": "2024-05", "CMONGO": "Y"},
    {"CMTRT": "Atorvastatin", "CMINDC": "Hyperlipidaemia", "CMDOSE": "20", "CMDOSU": "MG",
     "CMROUTE": "PO", "CMDOSFRQ": "QHS", "CMSTDTC": "2023", "CMONGO": "Y"}]}


def subject_id(ctx, number: str) -> int:
    return next(r.id for r in list_subjects(ctx) if r.screening_number == number)


def visit_id(ctx, number: str, code: str) -> int:
    return next(v.id for v in subject_detail(ctx, subject_id(ctx, number)).visits
                if v.code == code)


def correct(ctx, number: str, code: str, form: str, reason: str, **values: str) -> None:
    vid = visit_id(ctx, number, code)
    raw = dict(open_form(ctx, vid, form).raw, **values)
    save_form(ctx, vid, form, raw, complete=True, reason=reason)


def busy_laptop(path: Path, protocol, forms) -> None:
    """Laptop A: the demo population, then corrections, a repeating table, queries, SDV,
    signatures, locks, AE and dose corrections, an SAE report, failed logins, a refusal."""
    a = make_laptop(path, protocol, forms)
    add_user(a.study.db, SYSTEM, NewUser("mon", "Mo Monitor", Role.MONITOR, PASSWORD))
    mon = login(a.study, "mon", PASSWORD)
    inv, dm = a.inv, a.dm
    today = date.today()
    populate(inv, 12, today)
    # corrections with a reason, a value removed, a repeating table with rows added and removed
    correct(inv, "S01-004", "SCR", "vital_signs", "transcription error", PULSE="77", VSTIM="")
    scr = visit_id(inv, "S01-004", "SCR")
    save_form(inv, scr, "conmeds", CONMEDS, complete=True)
    save_form(inv, scr, "conmeds", {"medications": CONMEDS["medications"][1:]}, complete=True,
              reason="aspirin was stopped before screening")
    # the query workflow
    qid = raise_query(mon, scr, "vital_signs", "SYSBP", "Please check against the source")
    answer_query(inv, qid, "Checked: as in the source")
    close_query(mon, qid, "Thank you")
    reopen_query(mon, qid, "Re-opened: the source says otherwise")
    answer_query(inv, qid, "Corrected in the source notes")
    # SDV cleared by a later change; signatures, one invalidated by a change, one kept
    signoff.verify_form(mon, scr, "nihss")
    signoff.verify_form(mon, scr, "vital_signs")
    sid4 = subject_id(inv, "S01-004")
    signoff.sign(inv, sid4, scope="visit", password=PASSWORD, meaning=signoff.MEANINGS[0],
                 visit_id=scr)
    correct(inv, "S01-004", "SCR", "vital_signs", "re-measured", TEMP="36.8")
    sid5 = subject_id(inv, "S02-005")
    signoff.sign(inv, sid5, scope="casebook", password=PASSWORD,
                 meaning=signoff.MEANINGS[3])
    # locks: one lifted, one in force
    lock = signoff.lock(dm, "subject", sid4, "interim analysis")
    signoff.unlock(dm, lock, "interim analysis done")
    signoff.lock(dm, "subject", subject_id(inv, "S02-008"), "database lock of the site")
    # a visit date corrected, an AE corrected, an SAE reported, a dose corrected
    record_visit_date(inv, visit_id(inv, "S01-004", "D7"),
                      subject_detail(inv, sid4).visits[2].planned_date + timedelta(days=1),
                      reason="the visit took place the next day")
    ae = list_adverse_events(inv, sid5)[0]
    update_adverse_event(inv, ae.id, replace(ae_input(ae), treatment="Saline spray"),
                         reason="treatment was not recorded")
    sae = list_adverse_events(inv, subject_id(inv, "S03-012"))[0]
    mark_sae_reported(inv, sae.id, datetime.now(UTC) - timedelta(minutes=1))
    dose = list_doses(inv, sid5)[0]
    update_dose(inv, dose.id, replace(dose_input(dose), lot="LOT-2699Z"),
                reason="wrong lot number")
    # a failed login then a good one; a refused action
    with pytest.raises(AuthenticationFailed):
        login(a.study, "inv", "not the password")
    login(a.study, "inv", PASSWORD)
    with pytest.raises(PermissionDenied):
        save_form(mon, scr, "vital_signs", {})
    a.study.close()


def exchange(a_path: Path, b_path: Path, new_path: Path, tmp: Path, protocol, forms) -> None:
    """Laptop B imports A's file, both change the same value, B merges A's next file and keeps
    its value, A receives B's decision; a third database is created from A's first file."""
    from crf_app.services.context import open_new_database, open_study

    a_study = open_study(f"sqlite:///{a_path}")
    a_dm, a_inv = login(a_study, "dm", PASSWORD), login(a_study, "inv", PASSWORD)
    a_inv = replace(a_inv, user=replace(a_inv.user, site_code=None))
    export_odm(a_dm, tmp / "a1.xml")
    b = make_laptop(b_path, protocol, forms)
    import_odm(b.dm, tmp / "a1.xml")
    correct(a_inv, "S03-003", "SCR", "vital_signs", "re-measured on A", PULSE="95",
            TEMP="36.9")
    correct(b.inv, "S03-003", "SCR", "vital_signs", "re-measured on B", PULSE="99",
            WEIGHT="81.5")
    new = enroll_subject(a_inv, Enrollment("S01-099", "S01", "NEW", 1970, "F", "NSX",
                                           date.today() - timedelta(days=1),
                                           date.today() - timedelta(days=1)))
    record_visit_date(a_inv, subject_detail(a_inv, new).visits[0].id, date.today())
    export_odm(a_dm, tmp / "a2.xml")
    report = import_odm(b.dm, tmp / "a2.xml")
    assert len(report.conflicts) == 1
    [c] = list_conflicts(b.dm)
    resolve_conflict(b.dm, c.id, "local", "B's measurement is the source document")
    export_odm(b.dm, tmp / "b1.xml")
    import_odm(a_dm, tmp / "b1.xml")
    b.study.close()
    a_study.close()
    db = open_new_database(f"sqlite:///{new_path}")
    try:
        import_new_study(db, tmp / "a1.xml",
                         admin=NewUser("admin", "Ada Admin", Role.ADMIN, PASSWORD))
    finally:
        db.dispose()


def copy_db(src: Path, dst: Path) -> Path:
    """A consistent copy (SQLite backup API: the WAL is folded in)."""
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        s.backup(d)
    finally:
        s.close()
        d.close()
    return dst


def raw(path: Path, *statements: str, unlock_audit: bool = False) -> list[list[tuple]]:
    """Run SQL behind the app's back (raw sqlite3, no foreign keys); with `unlock_audit` the
    append-only triggers are dropped first, as a forger with file access would."""
    con = sqlite3.connect(path)
    try:
        if unlock_audit:
            con.execute("drop trigger if exists audit_event_no_update")
            con.execute("drop trigger if exists audit_event_no_delete")
        out = [con.execute(st).fetchall() for st in statements]
        con.commit()
        return out
    finally:
        con.close()


def value_id(path: Path, number: str, code: str, form: str, item: str, row: int = 0) -> int:
    [[(vid,)]] = raw(path, f"""
        select i.id from item_value i join form_instance f on f.id = i.form_instance_id
        join visit v on v.id = f.visit_id join subject s on s.id = v.subject_id
        where s.screening_number = '{number}' and v.visit_code = '{code}'
        and f.form_id = '{form}' and i.item_id = '{item}' and i.row_index = {row}""")
    return vid


def event_id(path: Path, where: str) -> int:
    [[(eid,)]] = raw(path, f"select max(id) from audit_event where {where}")
    assert eid is not None, where
    return eid
