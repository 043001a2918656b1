"""The generated study every benchmark uses: build time and size, and the bulk writer's speed
against the same actions through the services.

The studies are built once and cached (benchmarks/.cache/, keyed by size, seed and generator
version): the build time shown is the one measured when the cached file was built. Set
BENCH_REGENERATE=1 to build the 1,000-subject study again, timed now.
"""

from __future__ import annotations

import os
import time
from datetime import date

from benchmarks.common import BENCH_SUBJECTS, generated_meta, tmpdir

SERVICE_SUBJECTS = 8  # the same plan through the services: the baseline


def _rows(n: int):
    meta = generated_meta(n)
    rows = meta.get("rows", {})
    yield (f"generate {n:,} subjects over 10 sites (bulk, one-off, cached)",
           f"{meta.get('seconds', 0):.0f} s", f"({meta.get('seconds', 0) / n * 1000:.0f} ms "
                                               "per subject)")
    yield (f"  database size, {n:,} subjects", f"{meta.get('bytes', 0) / 2**20:,.0f} MB", "")
    yield (f"  item values / audit events, {n:,} subjects",
           f"{rows.get('item_value', 0) / 1e6:.2f} M / {rows.get('audit_event', 0) / 1e6:.2f} M",
           f"{rows.get('form_instance', 0):,} forms, {rows.get('dosing_record', 0):,} doses, "
           f"{rows.get('query', 0):,} queries")


def _fresh(n: int) -> float:
    from crf_app.generator.study import generate_study
    from crf_app.services.context import open_new_database
    from crf_app.services.definitions import load_definition

    definition = load_definition()
    db = open_new_database(f"sqlite:///{tmpdir() / 'fresh.db'}")
    try:
        return generate_study(db, definition.protocol, definition.forms, subjects=n).seconds
    finally:
        db.dispose()


def _per_subject_ms() -> tuple[float, float, int]:
    """ms per subject: the same plan of SERVICE_SUBJECTS subjects, bulk and through the
    services (each in a new database with the same accounts)."""
    from crf_app.generator.study import BulkWriter, Plan, new_study, run_with_services
    from crf_app.services.context import open_new_database
    from crf_app.services.definitions import load_definition
    from crf_app.services.forms import form_library

    definition = load_definition()
    out = []
    for bulk in (True, False):
        db = open_new_database(f"sqlite:///{tmpdir() / 'plan.db'}")
        study = new_study(db, definition.protocol, definition.forms)
        plan = Plan(study.protocol, form_library(study), SERVICE_SUBJECTS, seed=3,
                    today=date.today())
        actions = list(plan.actions())
        t0 = time.perf_counter()
        if bulk:
            BulkWriter(study).run(iter(actions))
        else:
            run_with_services(study, actions)
        out.append((time.perf_counter() - t0) / SERVICE_SUBJECTS * 1000)
        db.dispose()
    return out[0], out[1], len(actions)


def run():
    yield from _rows(1000)
    if BENCH_SUBJECTS != 1000:
        yield from _rows(BENCH_SUBJECTS)
    if os.environ.get("BENCH_REGENERATE"):
        seconds = _fresh(1000)
        yield ("generate 1,000 subjects again, timed now", f"{seconds:.0f} s", "")
    bulk_ms, service_ms, actions = _per_subject_ms()
    yield (f"same {SERVICE_SUBJECTS} subjects ({actions} actions): bulk, ms per subject",
           f"{bulk_ms:.0f} ms", "")
    yield ("  through the services (the GUI's calls), ms per subject", f"{service_ms:.0f} ms",
           "baseline")
    yield ("  bulk speed-up over the services", f"{service_ms / bulk_ms:.0f}x", "")
