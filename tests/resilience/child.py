"""The processes the resilience tests kill: a fork server and the jobs its workers run.

    python tests/resilience/child.py serve
    python tests/resilience/child.py job '{"job": "full_disk", ...}'   (one job, lines on stdout)

The server imports crf-app once, prints READY, then reads one JSON command per line on stdin:

    {"job": "save", "log": "/tmp/x.log", ...}   fork a worker running that job -> its pid
    {"wait": 1234}                              wait for that worker -> "killed" or "exit N"

A worker is a real process of its own (the tests SIGKILL it at random moments); forking it
from a server that has already imported the app makes a round cost milliseconds instead of an
interpreter start. A worker reports its progress as lines in its log file, each line written
with one write() only after the step it names has finished: "SAVED 17 …" means save_form for
save 17 had returned (committed). A job that fails writes "ERROR" and the traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

CHILD_PATH = Path(__file__).resolve()
ROOT = CHILD_PATH.parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORM = "vital_signs"
Out = Callable[[str], None]


# --- what a save writes: every value derived from the save's number n ---------------------------
def vitals(n: int) -> dict[str, str]:
    """The vital signs of save number n (all within the hard limits; n < 100 * 1440)."""
    return {"VSTIM": f"{n // 60 % 24:02d}:{n % 60:02d}", "SYSBP": str(95 + n % 80),
            "DIABP": str(55 + n % 30), "PULSE": str(55 + n % 50),
            "TEMP": f"{35.6 + (n % 20) / 10:.1f}", "WEIGHT": f"{50 + (n % 500) / 10:.1f}",
            "HEIGHT": str(150 + n // 1440)}


def save_number(stored: dict[tuple[str, int], str]) -> int:
    """The n a form's stored values were written from (read back from VSTIM and HEIGHT)."""
    hours, minutes = stored[("VSTIM", 0)].split(":")
    return (int(stored[("HEIGHT", 0)]) - 150) * 1440 + int(hours) * 60 + int(minutes)


# --- jobs ---------------------------------------------------------------------------------------
def _login(spec: dict):
    from crf_app.services.accounts import login
    from crf_app.services.context import open_study

    study = open_study(spec["url"])
    return login(study, spec["user"], spec["password"])


def job_save(spec: dict, out: Out) -> None:
    """Save the vital signs of the given visits in turn (save n -> visit n % len)."""
    from crf_app.services import forms as fsvc

    ctx = _login(spec)
    slots = spec["slots"]
    fsvc.open_form(ctx, slots[0], FORM)  # loads the form library: the saves start at once
    out("READY")
    for n in range(spec["start"], spec["start"] + spec["count"]):
        visit = slots[n % len(slots)]
        snap = fsvc.open_form(ctx, visit, FORM)
        out(f"TRY {n} {visit}")
        done = fsvc.save_form(ctx, visit, FORM, vitals(n), complete=n % 3 == 0,
                              reason="resilience test", expected_version=snap.row_version)
        out(f"SAVED {n} {visit} {done.row_version}")
    out("DONE")


def job_migrate(spec: dict, out: Out) -> None:
    """Open (back up and upgrade) an old database. With "steps", report each revision step
    as Alembic records it (inside the upgrade); with "pause_at", sleep after that step so the
    test can kill the process right there."""
    from crf_app.storage.migrate import open_database

    if spec.get("steps"):
        from alembic.runtime.migration import HeadMaintainer

        original = HeadMaintainer.update_to_step

        def update_to_step(self, step) -> None:
            original(self, step)
            revision = ",".join(step.to_revisions)
            out(f"STEP {revision}")
            if revision == spec.get("pause_at"):
                time.sleep(60)

        HeadMaintainer.update_to_step = update_to_step  # type: ignore[method-assign]
    out("READY")
    started = time.perf_counter()
    db = open_database(spec["url"])
    seconds = time.perf_counter() - started
    db.dispose()
    out(f"DONE {seconds:.4f}")


def job_pdf(spec: dict, out: Out) -> None:
    """Export one subject's casebook PDF again and again into the same folder."""
    from crf_app.services.pdf_export import export_subject_pdf

    ctx = _login(spec)
    out("READY")
    for i in range(spec["count"]):
        path = export_subject_pdf(ctx, spec["subject"], spec["out"])
        out(f"WROTE {i} {path}")
    out("DONE")


def _progress(spec: dict, out: Out):
    """A progress callback that, with "pause", stops the export after its first subject (the
    file half-written) so the test can kill the process right there."""

    def progress(done: int, _total: int) -> None:
        if spec.get("pause") and done == 1:
            out("PAUSED")
            time.sleep(60)

    return progress


def job_odm(spec: dict, out: Out) -> None:
    """Export the study's ODM snapshot again and again to the same path."""
    from crf_app.services.odm_export import export_odm

    ctx = _login(spec)
    out("READY")
    for i in range(spec["count"]):
        summary = export_odm(ctx, Path(spec["out"]), snapshot=True,
                             progress=_progress(spec, out))
        out(f"WROTE {i} {summary.subjects}")
    out("DONE")


def job_csv(spec: dict, out: Out) -> None:
    """Export the study as CSV files into a folder."""
    from crf_app.services.csv_service import export_csv

    ctx = _login(spec)
    out("READY")
    summary = export_csv(ctx, Path(spec["out"]), progress=_progress(spec, out))
    out(f"WROTE {len(summary.files)}")


def job_contend(spec: dict, out: Out) -> None:
    """Round after round: open the form, wait for the round's go file, then save it;
    report "SAVED r version" or "STALE r message"."""
    from crf_app.domain.errors import StaleData
    from crf_app.services import forms as fsvc

    ctx = _login(spec)
    for r, n in enumerate(spec["numbers"]):
        snap = fsvc.open_form(ctx, spec["visit"], FORM)
        out(f"OPENED {r} {snap.row_version}")
        go = Path(f"{spec['go']}-{r}")
        deadline = time.monotonic() + 30
        while not go.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no go signal {go}")
            time.sleep(0.0005)
        try:
            done = fsvc.save_form(ctx, spec["visit"], FORM, vitals(n),
                                  reason="second process", expected_version=snap.row_version)
        except StaleData as exc:
            out(f"STALE {r} {exc}")
        else:
            out(f"SAVED {r} {done.row_version}")


def _empty_wal(path: Path) -> None:
    """Checkpoint the WAL into the database and truncate it to nothing."""
    import sqlite3

    con = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        busy, _frames, _done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0 and os.path.getsize(f"{path}-wal") == 0
    finally:
        con.close()


def job_save_without_room(spec: dict, out: Out) -> None:
    """Save with the process unable to grow any file (RLIMIT_FSIZE 0): the input/output error
    a failing or vanished drive gives. Reports the error class, cause and message."""
    import resource

    from crf_app.domain.errors import CrfError, StorageFailed
    from crf_app.services import forms as fsvc

    ctx = _login(spec)
    snap = fsvc.open_form(ctx, spec["visit"], FORM)
    _empty_wal(ctx.study.db.path)  # the next write must grow the WAL file
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, limits[1]))
    try:
        fsvc.save_form(ctx, spec["visit"], FORM, vitals(spec["n"]), reason="no room",
                       expected_version=snap.row_version)
        outcome = "SAVED"
    except CrfError as exc:
        cause = exc.cause if isinstance(exc, StorageFailed) else "-"
        outcome = f"REFUSED {type(exc).__name__} {cause} {exc}"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)  # the log must grow again
    out(outcome)


def _fill_disk(path: Path) -> None:
    """Write `path` until the file system has no byte left (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    if os.write(fd, block) < size:
                        break
                except OSError:
                    break
        os.fsync(fd)
    finally:
        os.close(fd)


def job_full_disk(spec: dict, out: Out) -> None:
    """On a small file system of its own (tmpfs): fill the disk, save, then free it and save
    again. Reports REFUSED/SAVED, whether the saved values stayed, SQLite's integrity check."""
    import sqlite3

    from crf_app.domain.errors import CrfError, StorageFailed
    from crf_app.services import forms as fsvc

    ctx = _login(spec)
    before = fsvc.open_form(ctx, spec["visit"], FORM)
    _empty_wal(ctx.study.db.path)  # the next write must grow the WAL file
    filler = Path(spec["filler"])
    _fill_disk(filler)
    try:
        fsvc.save_form(ctx, spec["visit"], FORM, vitals(spec["n"]), reason="full disk",
                       expected_version=before.row_version)
        out("SAVED while the disk was full")
    except CrfError as exc:
        cause = exc.cause if isinstance(exc, StorageFailed) else "-"
        out(f"REFUSED {type(exc).__name__} {cause} {exc}")
    after = fsvc.open_form(ctx, spec["visit"], FORM)
    kept = after.raw == before.raw and after.row_version == before.row_version
    out("KEPT" if kept else f"CHANGED {after.raw}")
    con = sqlite3.connect(ctx.study.db.path)
    out(f"INTEGRITY {con.execute('PRAGMA integrity_check').fetchone()[0]}")
    con.close()
    filler.unlink()
    fsvc.save_form(ctx, spec["visit"], FORM, vitals(spec["n"]), reason="full disk",
                   expected_version=before.row_version)
    out(f"SAVED after freeing space {fsvc.open_form(ctx, spec['visit'], FORM).raw['VSTIM']}")


def job_gui_start(spec: dict, out: Out) -> None:
    """Start the GUI on a database; report the message box it shows and its exit code."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QMessageBox

    from crf_app.gui import app

    def critical(_parent, title, text, *args, **kwargs):
        out(f"MESSAGE {title} | {text}")
        return QMessageBox.StandardButton.Ok

    QMessageBox.critical = staticmethod(critical)  # type: ignore[method-assign]
    out(f"EXIT {app.run_gui(spec['url'])}")


JOBS = {"save": job_save, "migrate": job_migrate, "pdf": job_pdf, "odm": job_odm,
        "csv": job_csv, "contend": job_contend, "save_without_room": job_save_without_room,
        "full_disk": job_full_disk, "gui_start": job_gui_start}


# --- the fork server ----------------------------------------------------------------------------
def _run_worker(spec: dict) -> int:
    fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def out(text: str) -> None:
        os.write(fd, (text.replace("\n", " ") + "\n").encode())

    try:
        JOBS[spec["job"]](spec, out)
    except BaseException:
        out("ERROR " + traceback.format_exc())
        return 1
    return 0


def serve() -> None:
    # everything a job needs, imported once before forking (no threads, no open database)
    import crf_app.exports.pdf
    import crf_app.services.accounts
    import crf_app.services.context
    import crf_app.services.csv_service
    import crf_app.services.forms
    import crf_app.services.odm_export
    import crf_app.services.pdf_export
    import crf_app.storage.migrate  # noqa: F401

    print("READY", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if "wait" in cmd:
            _pid, status = os.waitpid(cmd["wait"], 0)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            print("killed" if killed else f"exit {os.waitstatus_to_exitcode(status)}",
                  flush=True)
            continue
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = _run_worker(cmd)
            finally:
                os._exit(code)
        print(pid, flush=True)


def run_here(spec: dict) -> None:
    """Run one job in this process, its lines on stdout (for jobs started in a namespace)."""

    def out(text: str) -> None:
        print(text.replace("\n", " "), flush=True)

    try:
        JOBS[spec["job"]](spec, out)
    except BaseException:
        out("ERROR " + traceback.format_exc())
        raise SystemExit(1) from None


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    elif len(sys.argv) == 3 and sys.argv[1] == "job":
        run_here(json.loads(sys.argv[2]))
    else:
        raise SystemExit("usage: child.py serve | child.py job JSON")
