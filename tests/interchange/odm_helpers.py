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
        }
    finally:
        con.close()


def data_events(path: Path) -> set[tuple]:
    """The audited changes of values: (entity, entity id, field, when, who, new value)."""
    con = sqlite3.connect(path)
    try:
        return set(con.execute(
            "select entity, entity_id, field, occurred_at, username, new_value "
            "from audit_event where entity in ('item', 'subject', 'visit')").fetchall())
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
