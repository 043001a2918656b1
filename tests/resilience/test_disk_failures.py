"""A full disk, a read-only database, a failing drive: the save is refused with a plain message,
what was typed stays in the form, and nothing saved before is lost.

Simulated portably (SQLite's max_page_count for a full disk, a `mode=ro` connection for a
read-only file, RLIMIT_FSIZE for an input/output error), and for real where the machine allows
it (a tiny tmpfs, a read-only bind mount, both in a private mount namespace: `unshare -m`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox
from sqlalchemy import event

from crf_app.domain.errors import DatabaseRefused, StorageFailed
from crf_app.domain.roles import Role
from crf_app.gui.form_dialog import FormDialog
from crf_app.services import forms as fsvc
from crf_app.services.context import open_study
from crf_app.storage.audit import verify_chain
from crf_app.storage.failures import failure_cause, storage_failure
from tests.conftest import PASSWORD, fixed_clock
from tests.resilience.child import CHILD_PATH, FORM, vitals
from tests.resilience.conftest import enroll_with_visits, wait_for_line

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_modal_prompts(monkeypatch):
    monkeypatch.setattr(FormDialog, "confirm_discard",
                        lambda self: QMessageBox.StandardButton.Discard)


@pytest.fixture
def coord(coordinator):
    coordinator.clock = fixed_clock()
    return coordinator


@pytest.fixture
def saved(study, coord):
    """Vital signs saved once (save 1); returns (visit id, row version)."""
    visit = enroll_with_visits(coord, "S01-001")[0]
    fsvc.save_form(coord, visit, FORM, vitals(1), complete=True, expected_version=0)
    return visit, fsvc.open_form(coord, visit, FORM).row_version


def assert_intact(study, coord, visit, version) -> None:
    """Save 1 is still there, whole; the file and the audit chain are sound."""
    snap = fsvc.open_form(coord, visit, FORM)
    assert {k: snap.raw[k] for k in vitals(1)} == vitals(1)
    assert snap.row_version == version
    con = sqlite3.connect(study.db.path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()
    with study.db.reading() as s:
        assert verify_chain(s)[1] is None


def fill_disk(study):
    """Make the database unable to grow, as on a full disk: repack it into 512-byte pages with
    no free page, then cap every connection at its current size (SQLite's max_page_count).
    Any save then needs a page it cannot have (a save writes far more than 512 bytes).
    Returns the function that frees the space again."""
    path = study.db.path
    study.db.engine.dispose()
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("PRAGMA page_size=512")
        con.execute("VACUUM")
        con.execute("PRAGMA journal_mode=WAL")
        assert con.execute("PRAGMA page_size").fetchone()[0] == 512
        assert con.execute("PRAGMA freelist_count").fetchone()[0] == 0
    finally:
        con.close()

    def cap(dbapi_conn, _record):
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    event.listen(study.db.engine, "connect", cap)

    def free() -> None:
        event.remove(study.db.engine, "connect", cap)
        study.db.engine.dispose()

    return free


def make_read_only(study):
    """Reconnect through a `file:…?mode=ro` URI: SQLite refuses every write, as it does for a
    file on read-only media. Returns the function that makes it writable again."""
    path = study.db.path

    def read_only(_dialect, _record, cargs, cparams):
        cargs[0] = f"file:{path}?mode=ro"
        cparams["uri"] = True

    study.db.engine.dispose()
    event.listen(study.db.engine, "do_connect", read_only)

    def writable() -> None:
        event.remove(study.db.engine, "do_connect", read_only)
        study.db.engine.dispose()

    return writable


# --- services ---------------------------------------------------------------------------------
def test_full_disk_refuses_the_save_plainly_and_loses_nothing(study, coord, saved):
    visit, version = saved
    free = fill_disk(study)
    with pytest.raises(StorageFailed) as caught:
        fsvc.save_form(coord, visit, FORM, vitals(2), complete=True, reason="correction",
                       expected_version=version)
    exc = caught.value
    assert exc.cause == StorageFailed.DISK_FULL and isinstance(exc, DatabaseRefused)
    assert str(exc).startswith("The disk is full: nothing was saved; free some space")
    assert str(exc).endswith("— what you typed is kept.")
    assert_intact(study, coord, visit, version)
    free()
    fsvc.save_form(coord, visit, FORM, vitals(2), complete=True, reason="correction",
                   expected_version=version)
    assert fsvc.open_form(coord, visit, FORM).raw["VSTIM"] == vitals(2)["VSTIM"]


def test_read_only_database_refuses_the_save_plainly_and_loses_nothing(study, coord, saved):
    visit, version = saved
    writable = make_read_only(study)
    with pytest.raises(StorageFailed) as caught:
        fsvc.save_form(coord, visit, FORM, vitals(2), reason="correction",
                       expected_version=version)
    message = str(caught.value)
    assert caught.value.cause == StorageFailed.READ_ONLY
    assert message.startswith(f"The database file {study.db.path} is read-only")
    assert "nothing was saved" in message and "what you typed is kept" in message
    assert fsvc.open_form(coord, visit, FORM).raw["VSTIM"] == vitals(1)["VSTIM"]  # reads work
    writable()
    assert_intact(study, coord, visit, version)


def test_input_output_error_refuses_the_save_plainly(study, coord, saved, workers, tmp_path,
                                                    db_url):
    """A process that cannot grow any file (RLIMIT_FSIZE 0) gets SQLite's disk I/O error."""
    visit, version = saved
    log = tmp_path / "io.log"
    pid = workers.start("save_without_room", log, url=db_url, user="coord",
                        password=PASSWORD, visit=visit, n=2)
    line = wait_for_line(log, ("REFUSED", "SAVED"))[-1]
    assert workers.wait(pid) == "exit 0"
    assert line.startswith("REFUSED StorageFailed io_error The disk reported an input/output "
                           "error"), line
    assert "nothing was saved" in line and "what you typed is kept" in line
    assert_intact(study, coord, visit, version)


@pytest.mark.parametrize(("text", "cause", "start"), [
    ("database or disk is full", StorageFailed.DISK_FULL, "The disk is full: nothing was saved"),
    ("attempt to write a readonly database", StorageFailed.READ_ONLY, "The database file"),
    ("disk I/O error", StorageFailed.IO_ERROR, "The disk reported an input/output error"),
    ("database is locked", StorageFailed.BUSY, "The database is busy"),
    ("database disk image is malformed", StorageFailed.DAMAGED, "The database file"),
    ("unable to open database file", StorageFailed.CANNOT_OPEN, "The database file"),
    ("no such savepoint: sp1", StorageFailed.OTHER, "The database refused the operation"),
])
def test_driver_errors_become_plain_messages(text, cause, start):
    from sqlalchemy.exc import OperationalError

    raw = sqlite3.OperationalError(text)  # no result code: recognised by its text
    wrapped = OperationalError("INSERT …", {}, raw)
    for exc in (raw, wrapped):
        failure = storage_failure(exc, location="/data/study.db")
        assert failure is not None and failure.cause == cause
        assert str(failure).startswith(start)
        assert "OperationalError" not in str(failure)
    reading = storage_failure(wrapped, location="/data/study.db", writing=False)
    assert "what you typed" not in str(reading)


@pytest.mark.parametrize(("sqlstate", "cause"), [
    ("53100", StorageFailed.DISK_FULL), ("25006", StorageFailed.READ_ONLY),
    ("55P03", StorageFailed.BUSY), ("08006", StorageFailed.UNAVAILABLE),
    (None, StorageFailed.UNAVAILABLE), ("42P01", StorageFailed.OTHER),
])
def test_postgresql_errors_by_sqlstate(sqlstate, cause):
    from sqlalchemy.exc import OperationalError

    class PgError(Exception):  # what psycopg raises: a SQLSTATE, or none without a server
        pass

    PgError.__module__ = "psycopg.errors"
    orig = PgError("connection refused" if sqlstate is None else "server said no")
    orig.sqlstate = sqlstate
    failure = storage_failure(OperationalError("SELECT 1", {}, orig))
    assert failure is not None and failure.cause == cause


def test_bugs_are_not_disguised_as_disk_trouble():
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    assert failure_cause(IntegrityError("INSERT …", {}, sqlite3.IntegrityError("UNIQUE"))) \
        is None
    assert failure_cause(ProgrammingError("SELECT …", {}, sqlite3.ProgrammingError("x"))) \
        is None
    assert failure_cause(ValueError("database is locked")) is None


# --- the form dialog --------------------------------------------------------------------------
def _type(qtbot, dlg, item, text):
    ed = dlg.renderer.editors[item]
    ed.edit.setFocus()
    ed.edit.selectAll()
    qtbot.keyClicks(ed.edit, text)


@pytest.mark.parametrize("failure", ["full disk", "read-only file"])
def test_form_dialog_says_why_and_keeps_what_was_typed(qtbot, study, coord, saved, failure):
    visit, version = saved
    dlg = FormDialog(coord, visit, FORM)
    qtbot.addWidget(dlg)
    dlg.show()
    dlg.ask_reason = lambda: "transcription error"
    _type(qtbot, dlg, "SYSBP", "141")
    _type(qtbot, dlg, "PULSE", "66")
    typed = dlg.renderer.raw()
    restore = fill_disk(study) if failure == "full disk" else make_read_only(study)

    assert not dlg.save()
    shown = dlg.error.text()
    assert dlg.error.isVisible()
    if failure == "full disk":
        assert "The disk is full: nothing was saved" in shown
    else:
        assert f"The database file {study.db.path} is read-only" in shown
    assert "what you typed is kept" in shown
    assert dlg.renderer.raw() == typed  # still in the widgets
    assert dlg.renderer.editors["SYSBP"].value() == "141"
    assert dlg.dirty and "unsaved changes" in dlg.status_label.text()
    assert fsvc.open_form(coord, visit, FORM).raw["SYSBP"] == vitals(1)["SYSBP"]

    restore()
    assert_intact(study, coord, visit, version)
    assert dlg.save()  # space freed / file writable again: the same entries save
    assert fsvc.open_form(coord, visit, FORM).raw["SYSBP"] == "141"


# --- opening a read-only database ---------------------------------------------------------------
def _pretend_read_only(monkeypatch, path: Path) -> None:
    """os.access as for a file on a write-protected drive (as root, chmod stops nothing)."""
    real = os.access

    def access(p, mode, *args, **kwargs):
        if Path(p) == path and mode & os.W_OK:
            return False
        return real(p, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_opening_a_read_only_database_says_so(study, db_url, monkeypatch):
    path = study.db.path
    study.close()
    before = path.read_bytes()
    _pretend_read_only(monkeypatch, path)
    with pytest.raises(StorageFailed) as caught:
        open_study(db_url)
    assert caught.value.cause == StorageFailed.READ_ONLY
    message = str(caught.value)
    assert message.startswith(f"The database file {path} is read-only")
    assert "copy the database to a writable folder" in message
    assert path.read_bytes() == before


def test_gui_start_on_a_read_only_database_says_so(qapp, study, db_url, monkeypatch, capsys):
    from crf_app.gui import app

    path = study.db.path
    study.close()
    _pretend_read_only(monkeypatch, path)
    shown = []
    monkeypatch.setattr(app.QMessageBox, "critical",
                        staticmethod(lambda _p, title, text: shown.append((title, text))))
    assert app.run_gui(db_url) == 1
    assert len(shown) == 1
    title, text = shown[0]
    assert title == "crf-app cannot open the database"
    assert text.startswith(f"The database file {path} is read-only")
    assert "Traceback" not in capsys.readouterr().err


def test_command_line_on_a_read_only_database_says_so(study, db_url, monkeypatch, capsys):
    from crf_app.cli import main

    path = study.db.path
    study.close()
    _pretend_read_only(monkeypatch, path)
    assert main(["--database", db_url, "verify-audit"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"crf-app: error: The database file {path} is read-only")
    assert "Traceback" not in err


# --- for real: a tiny tmpfs, a read-only bind mount (private mount namespace) -------------------
@cache
def _private_mounts() -> str | None:
    """Why `unshare -m` + mount cannot be used here (None when they can)."""
    if not sys.platform.startswith("linux") or not shutil.which("unshare"):
        return "needs Linux and unshare"
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt 2>&1 || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"cannot mount in a namespace: {probe.stdout}"


def _in_private_mounts(setup: str, spec: dict) -> list[str]:
    reason = _private_mounts()
    if reason:
        pytest.skip(reason)
    command = (f"{setup} && exec {shlex.quote(sys.executable)} {shlex.quote(str(CHILD_PATH))} "
               f"job {shlex.quote(json.dumps(spec))}")
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and not [x for x in lines if x.startswith("ERROR")], (
        done.stdout + done.stderr)
    return lines


def test_real_full_disk(study, coord, saved, tmp_path):
    visit, _version = saved
    source = study.db.path
    study.close()
    disk = tmp_path / "disk"
    disk.mkdir()
    size_kb = source.stat().st_size // 1024 + 512  # room for the copy, and a little more
    lines = _in_private_mounts(
        f"mount -t tmpfs -o size={size_kb}k tmpfs {shlex.quote(str(disk))} && "
        f"cp {shlex.quote(str(source))} {shlex.quote(str(disk / 'study.db'))}",
        {"job": "full_disk", "url": f"sqlite:///{disk / 'study.db'}", "user": "coord",
         "password": PASSWORD, "visit": visit, "n": 2, "filler": str(disk / "filler")})
    assert lines[0].startswith("REFUSED StorageFailed disk_full The disk is full: nothing was "
                               "saved"), lines
    assert lines[1:4] == ["KEPT", "INTEGRITY ok",
                          f"SAVED after freeing space {vitals(2)['VSTIM']}"], lines


def test_real_read_only_drive_at_gui_start(study, tmp_path):
    path = study.db.path
    study.close()
    view = tmp_path / "write-protected"
    view.mkdir()
    before = path.read_bytes()
    lines = _in_private_mounts(
        f"mount --bind {shlex.quote(str(path.parent))} {shlex.quote(str(view))} && "
        f"mount -o remount,ro,bind {shlex.quote(str(view))}",
        {"job": "gui_start", "url": f"sqlite:///{view / path.name}"})
    assert lines == [
        f"MESSAGE crf-app cannot open the database | The database file {view / path.name} is "
        "read-only (a write-protected or read-only drive, or no permission to write to it): "
        "crf-app writes to the database on every login and save, so it cannot open it; "
        "nothing was changed — copy the database to a writable folder and open the copy",
        "EXIT 1"], lines
    assert path.read_bytes() == before


def test_login_on_a_read_only_database_is_refused_plainly(study, as_role):
    make_read_only(study)
    with pytest.raises(StorageFailed, match="is read-only"):
        as_role(Role.INVESTIGATOR)


def test_upgrade_on_a_full_disk_is_refused_plainly_and_rolled_back(tmp_path, monkeypatch):
    from crf_app.storage import migrate

    path = tmp_path / "old.db"
    shutil.copyfile(ROOT / "tests" / "migrations" / "data" / "rev-0001.db", path)
    real_make_engine = migrate.make_engine

    def full_disk_engine(url, **kwargs):
        engine = real_make_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def cap(dbapi_conn, _record):
            pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
            dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

        return engine

    monkeypatch.setattr(migrate, "make_engine", full_disk_engine)
    with pytest.raises(StorageFailed) as caught:
        migrate.open_database(f"sqlite:///{path}")
    assert caught.value.cause == StorageFailed.DISK_FULL
    assert str(caught.value).startswith(f"{path} could not be upgraded to this version of "
                                        "crf-app because the disk is full; the upgrade was "
                                        "rolled back and the database is unchanged")
    engine = real_make_engine(f"sqlite:///{path}")
    assert migrate.current_revision(engine) == "0001"
    engine.dispose()
    monkeypatch.setattr(migrate, "make_engine", real_make_engine)  # space freed
    db = migrate.open_database(f"sqlite:///{path}")
    assert migrate.current_revision(db.engine) == migrate.head_revision()
    db.dispose()
    assert not migrate.upgrade_marker_path(path).exists()


def test_login_dialog_says_why_a_login_cannot_be_written(qtbot, study):
    from crf_app.gui.login_dialog import LoginDialog

    dlg = LoginDialog(study)
    qtbot.addWidget(dlg)
    dlg.username.setText("coord")
    dlg.password.setText(PASSWORD)
    make_read_only(study)
    dlg.try_login()
    assert "is read-only" in dlg.error.text()


def test_new_database_in_a_read_only_folder_says_so(tmp_path, monkeypatch):
    from crf_app.services.context import open_new_database

    folder = tmp_path / "stick"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == folder
                        and mode & os.W_OK else real(p, mode, *a, **k))
    with pytest.raises(StorageFailed, match=r"^The folder .*stick that holds \(or would hold\) "
                                            r"the database is read-only"):
        open_new_database(str(folder / "new" / "study.db"))
    assert not (folder / "new").exists()
