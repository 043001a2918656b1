"""Shared set-up for benchmarks: the generated study (cached), temp databases, a study, bulk
subjects, and reading a figure against its target."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from crf_app.services.passwords import use_fast_hashing_for_tests

use_fast_hashing_for_tests()

PASSWORD = "Bench-pass-2026"
CACHE = Path(__file__).resolve().parent / ".cache"  # generated studies (gitignored)
BENCH_SUBJECTS = int(os.environ.get("BENCH_SUBJECTS", "10000"))  # `make bench BENCH_SUBJECTS=…`
_TEMP: list[Path] = []


def tmpdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="crf-bench-"))
    _TEMP.append(path)
    return path


@atexit.register
def _clean() -> None:  # the working copies of a generated study are gigabytes
    for path in _TEMP:
        shutil.rmtree(path, ignore_errors=True)


# --- the generated study (crf_app.generator.study), cached by size and generator version ----
def generated_db(n: int = BENCH_SUBJECTS, seed: int | None = None) -> Path:
    """The generated study of `n` subjects over 10 sites, built on first use and kept under
    benchmarks/.cache/ (keyed by n, seed and GENERATOR_VERSION). Its build time and size are
    in the .json file beside it."""
    from crf_app.generator.study import DEFAULT_SEED, GENERATOR_VERSION

    seed = DEFAULT_SEED if seed is None else seed
    path = CACHE / f"study-n{n}-s{seed}-v{GENERATOR_VERSION}.db"
    if path.exists():
        return path
    from crf_app.generator.study import generate_study
    from crf_app.services.context import open_new_database
    from crf_app.services.definitions import load_definition

    CACHE.mkdir(exist_ok=True)
    building = path.with_suffix(".building")
    for leftover in CACHE.glob(f"{building.name}*"):
        leftover.unlink()
    print(f"   (generating the {n:,}-subject study once; cached in {path})", file=sys.stderr,
          flush=True)
    definition = load_definition()
    db = open_new_database(f"sqlite:///{building}")
    try:
        summary = generate_study(db, definition.protocol, definition.forms, subjects=n,
                                 seed=seed)
    finally:
        db.dispose()
    building.rename(path)
    meta = {"subjects": n, "seed": seed, "version": GENERATOR_VERSION,
            "seconds": round(summary.seconds, 1), "bytes": path.stat().st_size,
            "rows": summary.rows, "statuses": summary.statuses, "summary": summary.text()}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return path


def generated_meta(n: int = BENCH_SUBJECTS) -> dict:
    path = generated_db(n)
    meta = path.with_suffix(".json")
    return json.loads(meta.read_text(encoding="utf-8")) if meta.exists() else {}


def working_copy(n: int = BENCH_SUBJECTS) -> Path:
    """A copy of the generated study for the benchmarks that write: one per `make bench` run,
    shared by its benchmark processes (in BENCH_WORKDIR, which the run removes at the end)."""
    shared = os.environ.get("BENCH_WORKDIR")
    folder = Path(shared) if shared else tmpdir()
    target = folder / f"study-{n}.db"
    if not target.exists():
        part = target.with_suffix(".part")
        shutil.copyfile(generated_db(n), part)
        part.rename(target)
    return target


def open_generated(n: int = BENCH_SUBJECTS, username: str = "admin", *, copy: bool = False):
    """The generated study opened (the cached file, or the shared working copy when `copy`)
    and a context acting for `username` (no login: nothing is written to the cache)."""
    from sqlalchemy import select

    from crf_app.domain.roles import Role
    from crf_app.services.context import CurrentUser, UserContext, open_study
    from crf_app.storage.models import Site, User

    study = open_study(str(working_copy(n) if copy else generated_db(n)))
    with study.db.reading() as s:
        user, site = s.execute(select(User, Site.code).outerjoin(Site, User.site_id == Site.id)
                               .where(User.username == username)).one()
    return study, UserContext(study, CurrentUser(user.id, user.username, user.full_name,
                                                 Role(user.role), site))


# --- a figure against its target --------------------------------------------------------------
_UNITS = {"ms": 0.001, "s": 1.0, "mb": 1.0, "gb": 1024.0, "kb": 1 / 1024, "x": 1.0, "p/s": 1.0,
          "%": 1.0}
_NUMBER = re.compile(r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*(ms|s|mb|gb|kb|x|p/s|%)?", re.I)


def _quantity(text: str) -> tuple[float, str] | None:
    m = _NUMBER.search(text)
    if not m:
        return None
    unit = (m.group(2) or "").lower()
    scale = _UNITS.get(unit, 1.0)
    kind = {"ms": "s", "kb": "mb", "gb": "mb"}.get(unit, unit)
    return float(m.group(1).replace(",", "")) * scale, kind


def verdict(value: str, target: str) -> str:
    """'yes' / 'NO' when `target` is a bound ('< 0.8 s', '<= 5x', '>= 40 p/s', 'under 150
    MB') the measured `value` can be compared with; '' when it is not a bound."""
    m = re.match(r"\s*(<=|>=|<|>|≤|≥|under|within|at most|at least)\s*(.*)", target, re.I)
    if not m:
        return ""
    op = {"≤": "<=", "≥": ">=", "under": "<", "within": "<=", "at most": "<=",
          "at least": ">="}.get(m.group(1).lower(), m.group(1))
    got, bound = _quantity(value), _quantity(m.group(2))
    if got is None or bound is None or (got[1] and bound[1] and got[1] != bound[1]):
        return ""
    a, b = got[0], bound[0]
    ok = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    return "yes" if ok else "NO"


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
