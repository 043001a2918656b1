"""Helpers for the interchange tests: laptops (study databases), data dumps, file surgery."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

from crf_app.domain.roles import Role
from crf_app.services.context import StudyHandle, UserContext

SHARED = Path(__file__).resolve().parents[3] / "shared"
ODM_XSD = SHARED / "odm" / "ODM1-3-2" / "ODM1-3-2.xsd"
SAMPLES = SHARED / "samples"
NS = {"o": "http://www.cdisc.org/ns/odm/v1.3"}
PASSWORD = "Test-pass-1234"


@dataclass
class Laptop:
    """One site laptop: its study database and logged-in users."""

    study: StudyHandle
    dm: UserContext  # data manager: exports, imports, resolves conflicts
    inv: UserContext  # investigator working at every site: enters data

    @property
    def path(self) -> Path:
        assert self.study.db.path is not None
        return self.study.db.path


def make_laptop(path: Path, protocol, forms: dict) -> Laptop:
    from crf_app.services.accounts import login
    from crf_app.services.context import open_new_database
    from crf_app.services.setup import NewUser, add_user, create_study
    from crf_app.storage.audit import SYSTEM

    db = open_new_database(f"sqlite:///{path}")
    study = create_study(db, protocol, forms,
                         admin=NewUser("admin", "Ada Admin", Role.ADMIN, PASSWORD))
    add_user(db, SYSTEM, NewUser("dm", "Dana Manager", Role.DATA_MANAGER, PASSWORD))
    add_user(db, SYSTEM, NewUser("inv", "Ivo Investigator", Role.INVESTIGATOR, PASSWORD))
    dm = login(study, "dm", PASSWORD)
    inv = login(study, "inv", PASSWORD)
    return Laptop(study, dm, replace(inv, user=replace(inv.user, site_code=None)))


def all_sites(ctx: UserContext) -> UserContext:
    return replace(ctx, user=replace(ctx.user, site_code=None))


def dump(path: Path) -> dict[str, list[tuple]]:
    """Every stored value by natural keys (no database ids), for comparing two databases."""
    con = sqlite3.connect(path)
    try:
        return {
            "subjects": sorted(con.execute(
                "select s.screening_number, si.code, initials, birth_year, sex, arm, "
                "consent_date, enrolled_on, baseline_date, status, status_reason, status_date "
                "from subject s join site si on si.id = s.site_id").fetchall()),
            "visits": sorted(con.execute(
                "select s.screening_number, v.visit_code, v.sequence, v.planned_date, "
                "v.window_start, v.window_end, v.actual_date, v.status, v.deviation "
                "from visit v join subject s on s.id = v.subject_id").fetchall()),
            "forms": sorted(con.execute(
                "select s.screening_number, v.visit_code, f.form_id, f.form_version, f.status, "
                "f.updated_at, f.updated_by from form_instance f "
                "join visit v on v.id = f.visit_id join subject s on s.id = v.subject_id"
            ).fetchall()),
            "values": sorted(con.execute(
                "select s.screening_number, v.visit_code, f.form_id, i.item_id, i.row_index, "
                "i.value from item_value i join form_instance f on f.id = i.form_instance_id "
                "join visit v on v.id = f.visit_id join subject s on s.id = v.subject_id"
            ).fetchall()),
            "adverse_events": _rows(con, "adverse_event"),
            "doses": _rows(con, "dosing_record"),
            "signatures": sorted(con.execute(
                "select s.screening_number, g.scope, v.visit_code, f.form_id, g.username, "
                "g.printed_name, g.meaning, g.signed_at, g.values_hash, g.forms_signed, "
                "g.state, g.invalidated_at, g.invalidated_reason from signature g "
                "join subject s on s.id = g.subject_id left join visit v on v.id = g.visit_id "
                "left join form_instance f on f.id = g.form_instance_id").fetchall(),
                key=repr),
        }
    finally:
        con.close()


def _rows(con: sqlite3.Connection, table: str) -> list[tuple]:
    """Every column of a log table but the database's own ids (subject by screening number)."""
    columns = [r[1] for r in con.execute(f"pragma table_info({table})")
               if r[1] not in ("id", "subject_id", "row_version")]
    assert len(columns) > 12, columns
    return sorted(con.execute(
        f"select s.screening_number, {', '.join('t.' + c for c in columns)} from {table} t "
        "join subject s on s.id = t.subject_id").fetchall(), key=repr)


def data_events(path: Path) -> set[tuple]:
    """The audited changes of values: (entity, entity id, field, when, who, new value).

    A dosing record's entity id names it by its database id; here it is named by when and by
    whom it was created (the same in every database) so two databases compare."""
    con = sqlite3.connect(path)
    try:
        names = {}
        for sn, dose_id, created_at, created_by in con.execute(
                "select s.screening_number, d.id, d.created_at, d.created_by "
                "from dosing_record d join subject s on s.id = d.subject_id order by d.id"):
            rank = sum(1 for n in names.values() if n[:3] == (sn, created_at, created_by))
            names[f"{sn}/dose/{dose_id}"] = (sn, created_at, created_by, rank)
        return {(e, str(names.get(eid, eid)), *rest) for e, eid, *rest in con.execute(
            "select entity, entity_id, field, occurred_at, username, new_value from audit_event "
            "where entity in ('item', 'subject', 'visit', 'adverse_event', 'dose')")}
    finally:
        con.close()


def counts(path: Path) -> dict[str, int]:
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute(
            "select name from sqlite_master where type = 'table' and name != 'alembic_version'")]
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}
    finally:
        con.close()


def edit(src: Path, dst: Path, old: str, new: str, count: int = 1) -> Path:
    text = src.read_text(encoding="utf-8")
    assert old in text, old
    dst.write_text(text.replace(old, new, count), encoding="utf-8")
    return dst


def subject_id(ctx: UserContext, sn: str) -> int:
    from crf_app.services.subjects import list_subjects

    return next(r.id for r in list_subjects(ctx) if r.screening_number == sn)


def visit_id(ctx: UserContext, sn: str, code: str) -> int:
    from crf_app.services.subjects import subject_detail

    return next(v.id for v in subject_detail(ctx, subject_id(ctx, sn)).visits if v.code == code)


def set_values(ctx: UserContext, sn: str, code: str, form: str, reason: str,
               **values: str) -> None:
    """Change some values of a saved form (the rest as stored) and save it complete."""
    from crf_app.services.forms import open_form, save_form

    visit = visit_id(ctx, sn, code)
    save_form(ctx, visit, form, dict(open_form(ctx, visit, form).raw, **values), complete=True,
              reason=reason)


def enrich(lap: Laptop) -> None:
    """Log corrections, a reported SAE, a dosing query and signatures (one invalidated by a
    later change) on top of the demo population: every kind of log and signature record."""
    from datetime import timedelta

    from crf_app.domain.adverse_events import AeInput
    from crf_app.domain.dosing import DoseInput
    from crf_app.services.adverse_events import (
        ae_input,
        list_adverse_events,
        mark_sae_reported,
        record_adverse_event,
        update_adverse_event,
    )
    from crf_app.services.dosing import dose_input, list_doses, record_dose, update_dose
    from crf_app.services.forms import open_form, save_form
    from crf_app.services.signoff import sign

    inv = lap.inv
    sid = subject_id(inv, "S02-005")
    [ae] = list_adverse_events(inv, sid)
    update_adverse_event(inv, ae.id, replace(ae_input(ae), severity="MODERATE", grade="2"),
                         reason="re-graded after review")
    today = inv.today()
    sae = record_adverse_event(inv, sid, AeInput(
        term="OTHER", verbatim="Épistaxis — «nez»\u00a0<droit> & gauche", location="BOTH_NOSTRILS",
        start_date=(today - timedelta(days=2)).isoformat(), start_time="07:45", ongoing=True,
        severity="SEVERE", grade="3", serious="Y",
        criteria=("HOSPITALISATION", "MEDICALLY_IMPORTANT"), relationship="POSSIBLE",
        action="INTERRUPTED", outcome="NOT_RECOVERED", treatment="Nasal packing"))
    mark_sae_reported(inv, sae, inv.now() - timedelta(hours=1))
    dose = list_doses(inv, sid)[0]
    update_dose(inv, dose.id, replace(dose_input(dose), lot="LOT-9999Z"), reason="lot misread")
    record_dose(inv, sid, DoseInput(date=(today - timedelta(days=1)).isoformat(), time="20:30",
                                    dose_mg="0.45", instillations="1", nostril="LEFT",
                                    lot="LOT-2601A", given_by="STAFF"))
    scr = visit_id(inv, "S02-005", "SCR")
    sign(inv, sid, scope="form", password=PASSWORD, meaning="Reviewed and approved",
         visit_id=scr, form_id="vital_signs")
    sign(inv, sid, scope="casebook", password=PASSWORD,
         meaning="Responsible investigator sign-off")
    raw = dict(open_form(inv, scr, "vital_signs").raw, PULSE="77")
    save_form(inv, scr, "vital_signs", raw, complete=True, reason="re-measured")  # invalidates
    sign(inv, sid, scope="visit", password=PASSWORD, meaning="Reviewed and approved",
         visit_id=scr)
