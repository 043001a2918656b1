"""Shared set-up for benchmarks: temp databases, a study, bulk subjects."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from crf_app.services.passwords import use_fast_hashing_for_tests

use_fast_hashing_for_tests()

PASSWORD = "Bench-pass-2026"


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="crf-bench-"))


def new_study(path: Path):
    """A study database (protocol and forms from forms/) and a logged-in coordinator."""
    from crf_app.domain.roles import Role
    from crf_app.services.accounts import login
    from crf_app.services.context import open_new_database
    from crf_app.services.definitions import load_definition
    from crf_app.services.setup import NewUser, create_study

    definition = load_definition()
    db = open_new_database(f"sqlite:///{path}")
    study = create_study(db, definition.protocol, definition.forms,
                         admin=NewUser("admin", "Admin", Role.ADMIN, PASSWORD))
    from crf_app.services.setup import add_user
    from crf_app.storage.audit import SYSTEM

    add_user(db, SYSTEM, NewUser("inv", "Investigator", Role.INVESTIGATOR, PASSWORD))
    return study, login(study, "inv", PASSWORD)


def bulk_subjects(study, n: int, baseline: date | None = None) -> None:
    """Insert n subjects with their visits directly (fast set-up for read benchmarks)."""
    from crf_app.domain.subjects import schedule

    baseline = baseline or date.today() - timedelta(days=10)
    plan = schedule(study.protocol, baseline)
    raw = study.db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        sites = [r[0] for r in cur.execute("select id from site order by id")]
        for i in range(n):
            cur.execute(
                "insert into subject (study_id, site_id, screening_number, initials, birth_year,"
                " sex, arm, consent_date, enrolled_on, baseline_date, status, status_reason,"
                " metadata_version, row_version) values (?,?,?,?,?,?,?,?,?,?,?,?,1,1)",
                (study.study_id, sites[i % len(sites)], f"S{i % len(sites) + 1:02d}-{i:05d}",
                 "ABC", 1950 + i % 40, "FM"[i % 2], "NSX" if i % 2 else "PBO",
                 (baseline - timedelta(days=5)).isoformat(),
                 (baseline - timedelta(days=5)).isoformat(), baseline.isoformat(),
                 "on_study", ""))
            sid = cur.lastrowid
            cur.executemany(
                "insert into visit (subject_id, visit_code, sequence, planned_date, window_start,"
                " window_end, status, deviation, row_version) values (?,?,?,?,?,?,?,?,1)",
                [(sid, pv.code, pv.sequence, pv.planned.isoformat(),
                  pv.window_start.isoformat(), pv.window_end.isoformat(),
                  "done" if pv.planned < date.today() else "planned", "") for pv in plan])
        cur.execute("COMMIT")
    finally:
        raw.close()


def timed(fn: Callable[[], object], repeat: int = 5) -> tuple[float, object]:
    """Median wall time in seconds over `repeat` runs, and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result
