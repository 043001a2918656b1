"""Crash safety: worker processes are killed with SIGKILL at random (seeded) moments while they
save forms, upgrade a database, export PDF and ODM files. After every kill, whatever the moment:

- the database passes SQLite's integrity check and its audit chain verifies;
- every save the worker reported as committed is there, whole, with its audit events, and no
  form holds values of two saves (nothing half-written);
- an interrupted upgrade leaves the old schema or the new one, never a mix, and the next open
  finishes it (or restores the backup, saying so);
- no export leaves a partial file at its target path.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from crf_app.domain.errors import DatabaseRefused
from crf_app.domain.forms import validate_form
from crf_app.domain.roles import Role
from crf_app.services.forms import flatten, form_library
from crf_app.storage.audit import verify_chain
from crf_app.storage.engine import Database, make_engine
from crf_app.storage.migrate import (
    backup_path_for,
    backup_sqlite,
    current_revision,
    head_revision,
    open_database,
    script_directory,
    upgrade_marker_path,
    upgrade_to,
)
from crf_app.storage.models import AuditEvent, FormInstance, Subject, Visit
from tests.conftest import PASSWORD
from tests.resilience.child import FORM, save_number, vitals
from tests.resilience.conftest import enroll_with_visits, log_lines, wait_for_line

SEED = 20261124
DATA = Path(__file__).resolve().parents[1] / "migrations" / "data"


def sqlite_integrity(path: Path) -> None:
    """PRAGMA integrity_check is ok and no foreign key dangles (a fresh connection, as the next
    start of the app would open it after the crash)."""
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()


# --- saves --------------------------------------------------------------------------------------
@dataclass
class SavedState:
    forms: dict[int, tuple[str, dict[tuple[str, int], str]]]  # visit id -> (status, values)
    labels: dict[int, str]  # visit id -> "S01-001/SCR/vital_signs"
    item_events: dict[str, list[str | None]]  # item entity id -> new values, in order
    chain_break: object


def read_saved_state(url: str) -> SavedState:
    """Read the forms and the audit trail (the next worker's start opens it the app's way)."""
    db = Database(make_engine(url), url)
    try:
        with db.reading() as s:
            _checked, brk = verify_chain(s)
            forms = {fi.visit_id: (fi.status, {(v.item_id, v.row_index): v.value
                                               for v in fi.values})
                     for fi in s.execute(select(FormInstance).where(
                         FormInstance.form_id == FORM)).scalars()}
            labels = {v.id: f"{sn}/{v.visit_code}/{FORM}" for v, sn in s.execute(
                select(Visit, Subject.screening_number).join(Subject))}
            events: dict[str, list[str | None]] = defaultdict(list)
            for entity_id, new in s.execute(select(AuditEvent.entity_id, AuditEvent.new_value)
                                            .where(AuditEvent.entity == "item")
                                            .order_by(AuditEvent.id)):
                events[entity_id].append(new)
    finally:
        db.dispose()
    return SavedState(forms, labels, events, brk)


@pytest.mark.slow
def test_killed_writer_loses_no_committed_save_and_half_writes_nothing(
        study, coordinator, workers, tmp_path, db_url):
    rng = random.Random(SEED)
    slots = enroll_with_visits(coordinator, "S01-001") + enroll_with_visits(coordinator,
                                                                            "S01-002")
    form = form_library(study).get(FORM)
    study.close()
    path = tmp_path / "study.db"

    def expected(n: int) -> dict[tuple[str, int], str]:
        return flatten(form, validate_form(form, vitals(n), complete=n % 3 == 0).values)

    committed: dict[int, list[int]] = defaultdict(list)  # visit -> save numbers, in order
    next_n, rounds, kills_mid_save, after_a_save = 0, 16, 0, 0
    started = time.perf_counter()
    for r in range(rounds):
        log = tmp_path / f"save-{r}.log"
        pid = workers.start("save", log, url=db_url, user="coord", password=PASSWORD,
                            slots=slots, start=next_n, count=500)
        moment = rng.random()
        if moment < 0.15:  # while it opens the database and logs in
            time.sleep(rng.uniform(0, 0.15))
        else:
            wait_for_line(log, "READY")
            if moment > 0.5:  # not before its first save has committed
                wait_for_line(log, "SAVED")
                after_a_save += 1
            time.sleep(rng.uniform(0, 0.3))
        assert workers.kill(pid) in ("killed", "exit 0")
        lines = log_lines(log)
        assert not [line for line in lines if line.startswith("ERROR")], lines
        tries = [(int(w[1]), int(w[2])) for w in map(str.split, lines) if w[0] == "TRY"]
        saved = [(int(w[1]), int(w[2])) for w in map(str.split, lines) if w[0] == "SAVED"]
        for n, visit in saved:
            committed[visit].append(n)

        sqlite_integrity(path)
        state = read_saved_state(db_url)
        assert state.chain_break is None, f"round {r}: {state.chain_break}"
        # the save in flight when the process died: committed whole, or not at all
        if tries and (not saved or saved[-1][0] != tries[-1][0]):
            n, visit = tries[-1]
            kills_mid_save += 1
            if visit in state.forms and save_number(state.forms[visit][1]) == n:
                committed[visit].append(n)
        for visit in slots:
            if not committed[visit]:
                assert visit not in state.forms, f"round {r}: a form no save committed"
                continue
            status, stored = state.forms[visit]
            n = committed[visit][-1]
            # the last committed save, every item of it (BMI computed), none of another save
            assert stored == expected(n), f"round {r}, visit {visit}: not save {n}"
            assert status == ("complete" if n % 3 == 0 else "in_progress")
            label = state.labels[visit]
            # each committed save audited exactly once, in order; nothing else audited
            assert state.item_events[f"{label}/VSTIM"] == [
                expected(m)[("VSTIM", 0)] for m in committed[visit]], f"round {r}"
            for (item, _row), value in stored.items():
                assert state.item_events[f"{label}/{item}"][-1] == value
        next_n = tries[-1][0] + 1 if tries else next_n
    total = sum(len(v) for v in committed.values())
    print(f"\n{rounds} kills, {total} committed saves, {kills_mid_save} kills with a save in "
          f"flight, {time.perf_counter() - started:.1f} s")
    assert total >= after_a_save > 0  # the kills came while saves were running


# --- upgrades -----------------------------------------------------------------------------------
def schema_state(path: Path) -> tuple[str | None, list[tuple]]:
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        schema = sorted(con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                    "WHERE name NOT LIKE 'sqlite_%'").fetchall())
        revision = con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        con.close()
    return revision, schema


def table_rows(path: Path, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY 1").fetchall()
                for t, cols in columns.items()}
    finally:
        con.close()


@dataclass
class Reference:
    """An old fixture database, and the same database upgraded without interruption."""

    fixture: Path
    revision: str
    schema: list[tuple]
    columns: dict[str, list[str]]  # the old tables and their columns
    rows: dict[str, list[tuple]]
    head_schema: list[tuple]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Reference]:
    out = {}
    for revision in ("0001", "0002"):
        fixture = DATA / f"rev-{revision}.db"
        rev, schema = schema_state(fixture)
        assert rev == revision
        con = sqlite3.connect(fixture)
        columns = {t: [c[1] for c in con.execute(f"PRAGMA table_info({t})")]
                   for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                           "AND name != 'alembic_version'")}
        con.close()
        copy = tmp_path_factory.mktemp("reference") / "old.db"
        shutil.copyfile(fixture, copy)
        open_database(f"sqlite:///{copy}").dispose()
        head, head_schema = schema_state(copy)
        assert head == head_revision()
        out[revision] = Reference(fixture, revision, schema, columns,
                                  table_rows(fixture, columns), head_schema)
    return out


def check_after_crash(ref: Reference, path: Path, lines: list[str]) -> str:
    """The file is the old schema or the new one, whole; the next open upgrades it (or
    restores the backup, saying so), keeping every row. Returns "old" or "head"."""
    assert not [line for line in lines if line.startswith("ERROR")], lines
    revision, schema = schema_state(path)
    if revision == head_revision():
        assert schema == ref.head_schema
        outcome = "head"
    else:
        assert (revision, schema) == (ref.revision, ref.schema), "half-migrated schema"
        outcome = "old"
        assert not any(line.startswith("DONE") for line in lines)
    db = open_database(f"sqlite:///{path}")
    try:
        assert current_revision(db.engine) == head_revision()
        assert all("restored automatically" in notice for notice in db.notices)
    finally:
        db.dispose()
    assert schema_state(path) == (head_revision(), ref.head_schema)
    assert table_rows(path, ref.columns) == ref.rows
    assert not upgrade_marker_path(path).exists()
    return outcome


def steps_after(revision: str) -> list[str]:
    revisions = [r.revision for r in reversed(list(script_directory().walk_revisions()))]
    return revisions[revisions.index(revision) + 1:]


@pytest.mark.slow
def test_upgrade_killed_after_any_step_leaves_the_old_schema(references, workers, tmp_path):
    """Killed right after Alembic recorded each step (inside the upgrade): the old schema."""
    for revision, ref in references.items():
        for step in steps_after(revision):
            folder = tmp_path / f"{revision}-{step}"
            folder.mkdir()
            path = folder / "old.db"
            shutil.copyfile(ref.fixture, path)
            log = folder / "migrate.log"
            pid = workers.start("migrate", log, url=f"sqlite:///{path}", steps=True,
                                pause_at=step)
            wait_for_line(log, f"STEP {step}")
            assert workers.kill(pid) == "killed"
            assert check_after_crash(ref, path, log_lines(log)) == "old", step
            assert len(list(folder.glob("old.db.*.rev-*.bak"))) >= 1


@pytest.mark.slow
def test_upgrade_killed_at_random_moments(references, workers, tmp_path):
    rng = random.Random(SEED)
    outcomes: dict[str, int] = defaultdict(int)
    for revision, ref in references.items():  # how long an uninterrupted upgrade takes here
        calib = tmp_path / f"calibrate-{revision}"
        calib.mkdir()
        shutil.copyfile(ref.fixture, calib / "old.db")
        pid = workers.start("migrate", calib / "log", url=f"sqlite:///{calib / 'old.db'}")
        done = wait_for_line(calib / "log", "DONE")
        assert workers.wait(pid) == "exit 0"
        seconds = float(done[-1].split()[1])
        for r in range(5):
            folder = tmp_path / f"{revision}-{r}"
            folder.mkdir()
            path = folder / "old.db"
            shutil.copyfile(ref.fixture, path)
            log = folder / "migrate.log"
            pid = workers.start("migrate", log, url=f"sqlite:///{path}")
            wait_for_line(log, "READY")
            time.sleep(rng.uniform(0, 1.3 * seconds))
            workers.kill(pid)
            outcomes[check_after_crash(ref, path, log_lines(log))] += 1
    print(f"\nupgrades killed at random: {dict(outcomes)}")


def _old_copy(ref: Reference, folder: Path) -> tuple[Path, Path]:
    path = folder / "old.db"
    shutil.copyfile(ref.fixture, path)
    backup = backup_sqlite(path, backup_path_for(path, ref.revision))
    return path, backup


def _mark(path: Path, old: str, backup: Path) -> None:
    """The marker an upgrade leaves while it runs (as crf_app.storage.migrate writes it)."""
    from crf_app.storage import migrate

    migrate._write_marker(path, {"from": old, "to": head_revision(), "backup": str(backup)})


def test_half_migrated_database_is_restored_from_its_backup(references, tmp_path, caplog):
    """What a crash left before upgrades ran in one transaction (a commit per revision): the
    schema at an intermediate revision. The next open restores the backup and upgrades."""
    ref = references["0001"]
    path, backup = _old_copy(ref, tmp_path)
    _mark(path, "0001", backup)
    engine = make_engine(f"sqlite:///{path}")
    upgrade_to(engine, "0003")
    engine.dispose()
    db = open_database(f"sqlite:///{path}")
    db.dispose()
    assert len(db.notices) == 1
    notice = db.notices[0]
    assert "interrupted" in notice and "restored automatically" in notice
    assert backup.name in notice and "schema revision 0003" in notice
    assert notice in caplog.text
    assert schema_state(path) == (head_revision(), ref.head_schema)
    assert table_rows(path, ref.columns) == ref.rows
    assert not upgrade_marker_path(path).exists()


def test_half_applied_step_at_the_old_revision_is_restored(references, tmp_path):
    """The revision still says 0001 but a table of a later step exists: a half-applied step."""
    ref = references["0001"]
    path, backup = _old_copy(ref, tmp_path)
    _mark(path, "0001", backup)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE form_instance (id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    db = open_database(f"sqlite:///{path}")
    db.dispose()
    assert db.notices and "restored automatically" in db.notices[0]
    assert schema_state(path) == (head_revision(), ref.head_schema)
    assert table_rows(path, ref.columns) == ref.rows


def test_failed_upgrade_rolls_back_whole_and_runs_again(references, tmp_path, monkeypatch):
    from alembic.runtime.migration import HeadMaintainer

    ref = references["0002"]
    path = tmp_path / "old.db"
    shutil.copyfile(ref.fixture, path)
    original = HeadMaintainer.update_to_step

    def failing(self, step):
        original(self, step)
        if "0005" in step.to_revisions:
            raise RuntimeError("migration 0005 failed")

    monkeypatch.setattr(HeadMaintainer, "update_to_step", failing)
    with pytest.raises(RuntimeError, match="0005"):
        open_database(f"sqlite:///{path}")
    assert schema_state(path) == ("0002", ref.schema)  # 0003 and 0004 rolled back too
    assert upgrade_marker_path(path).exists()
    monkeypatch.setattr(HeadMaintainer, "update_to_step", original)
    db = open_database(f"sqlite:///{path}")
    db.dispose()
    assert db.notices == []
    assert schema_state(path) == (head_revision(), ref.head_schema)
    assert not upgrade_marker_path(path).exists()


def test_interrupted_upgrade_without_its_backup_is_refused_untouched(references, tmp_path):
    ref = references["0001"]
    path, backup = _old_copy(ref, tmp_path)
    _mark(path, "0001", backup)
    engine = make_engine(f"sqlite:///{path}")
    upgrade_to(engine, "0003")
    engine.dispose()
    backup.unlink()
    before = path.read_bytes()
    with pytest.raises(DatabaseRefused, match=r"interrupted.*missing"):
        open_database(f"sqlite:///{path}")
    assert path.read_bytes() == before


# --- exports ------------------------------------------------------------------------------------
@pytest.fixture
def exported_study(study, coordinator):
    """Two subjects with saved vital signs; returns the study's visits."""
    from crf_app.services import forms as fsvc

    visits = enroll_with_visits(coordinator, "S01-001") + enroll_with_visits(coordinator,
                                                                             "S01-002")
    for n, visit in enumerate(visits):
        fsvc.save_form(coordinator, visit, FORM, vitals(n), complete=True)
    return visits


@pytest.mark.slow
def test_killed_pdf_export_leaves_no_partial_pdf(study, exported_study, as_role, workers,
                                                tmp_path, db_url):
    from pypdf import PdfReader

    from crf_app.services.pdf_export import casebook_filename, subject_id_for

    monitor = as_role(Role.MONITOR)
    subject = subject_id_for(monitor, "S01-001")
    target = tmp_path / "pdf" / casebook_filename(study.protocol.study_id, "S01-001")
    study.close()
    first = workers.start("pdf", tmp_path / "pdf-first.log", url=db_url, user="mon",
                          password=PASSWORD, subject=subject, out=str(target.parent), count=1)
    wait_for_line(tmp_path / "pdf-first.log", "DONE", timeout=60)
    assert workers.wait(first) == "exit 0" and target.exists()
    rng = random.Random(SEED)
    for r in range(6):
        log = tmp_path / f"pdf-{r}.log"
        pid = workers.start("pdf", log, url=db_url, user="mon", password=PASSWORD,
                            subject=subject, out=str(target.parent), count=50)
        wait_for_line(log, "READY")
        time.sleep(rng.uniform(0, 0.6))
        workers.kill(pid)
        assert not [line for line in log_lines(log) if line.startswith("ERROR")]
        # the previous export or the new one, whole: a PDF that parses to its last page
        data = target.read_bytes()
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        assert len(PdfReader(target, strict=True).pages) >= 1
        assert [p.name for p in target.parent.iterdir() if not p.name.startswith(".")] == [
            target.name]  # temporary files are hidden dot-files, never the target


@pytest.mark.slow
def test_killed_odm_export_leaves_no_partial_file_and_a_whole_database(
        study, exported_study, as_role, workers, tmp_path, db_url):
    from lxml import etree

    as_role(Role.MONITOR)
    study.close()
    target = tmp_path / "odm" / "study.xml"
    target.parent.mkdir()
    first = workers.start("odm", tmp_path / "odm-first.log", url=db_url, user="mon",
                          password=PASSWORD, out=str(target), count=1)
    wait_for_line(tmp_path / "odm-first.log", "DONE", timeout=60)
    assert workers.wait(first) == "exit 0" and target.exists()
    rng = random.Random(SEED + 1)
    ns = "{http://www.cdisc.org/ns/odm/v1.3}"
    for r in range(6):
        log = tmp_path / f"odm-{r}.log"
        pid = workers.start("odm", log, url=db_url, user="mon", password=PASSWORD,
                            out=str(target), count=50)
        wait_for_line(log, "READY")
        time.sleep(rng.uniform(0, 0.6))
        workers.kill(pid)
        assert not [line for line in log_lines(log) if line.startswith("ERROR")]
        # the previous export or the new one, whole: it parses, both subjects in it
        root = etree.parse(str(target)).getroot()
        assert root.tag == f"{ns}ODM"
        assert len(root.findall(f"{ns}ClinicalData/{ns}SubjectData")) == 2
        sqlite_integrity(tmp_path / "study.db")
        state = read_saved_state(db_url)
        assert state.chain_break is None


def test_odm_export_killed_half_way_leaves_the_previous_file_whole(
        study, exported_study, as_role, workers, tmp_path, db_url):
    """Killed after the first subject was written (the file half done): the target path holds
    nothing (first export) or the previous export, byte for byte."""
    as_role(Role.MONITOR)
    study.close()
    target = tmp_path / "odm" / "study.xml"
    target.parent.mkdir()
    for previous in (None, "whole"):
        if previous:
            pid = workers.start("odm", tmp_path / "odm-whole.log", url=db_url, user="mon",
                                password=PASSWORD, out=str(target), count=1)
            wait_for_line(tmp_path / "odm-whole.log", "DONE")
            assert workers.wait(pid) == "exit 0"
        before = target.read_bytes() if target.exists() else None
        log = tmp_path / f"odm-paused-{previous}.log"
        pid = workers.start("odm", log, url=db_url, user="mon", password=PASSWORD,
                            out=str(target), count=1, pause=True)
        wait_for_line(log, "PAUSED")
        assert workers.kill(pid) == "killed"
        assert (target.read_bytes() if target.exists() else None) == before
        # what the killed export leaves: its unfinished temporary file beside the target
        leftovers = [p.name for p in target.parent.iterdir() if p != target]
        print(f"\nafter a kill half-way through an ODM export: {leftovers}")
    sqlite_integrity(tmp_path / "study.db")


def test_csv_export_killed_half_way_leaves_no_partial_file(
        study, exported_study, as_role, workers, tmp_path, db_url):
    as_role(Role.MONITOR)
    study.close()
    folder = tmp_path / "csv"
    log = tmp_path / "csv.log"
    pid = workers.start("csv", log, url=db_url, user="mon", password=PASSWORD,
                        out=str(folder), pause=True)
    wait_for_line(log, "PAUSED")
    assert workers.kill(pid) == "killed"
    visible = sorted(p.name for p in folder.glob("*.csv")) if folder.exists() else []
    assert visible == [], f"partial CSV files left at their final names: {visible}"
