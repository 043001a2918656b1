"""Monitoring on the generated study: the query list over all its queries; signing a casebook.

The query figures read the cached study as the monitor; the signature is written to the
working copy by the investigator of site S01, on a completed subject's casebook (about 36
forms).
"""

from __future__ import annotations

import time

from benchmarks.common import BENCH_SUBJECTS, open_generated, timed

PASSWORD = "Demo-pass-2026"  # the generated study's accounts (crf_app.services.demo)


def run():
    study, mon = open_generated(BENCH_SUBJECTS, "monitor")
    from crf_app.services.queries import list_queries

    list_s, rows = timed(lambda: list_queries(mon), repeat=3)
    n = len(rows)
    filter_s, found = timed(lambda: list_queries(mon, site="S02", state="open",
                                                 min_age_days=30), repeat=3)
    from crf_app.gui.app import make_application
    from crf_app.gui.query_list import QueryListDialog

    app = make_application()
    t0 = time.perf_counter()
    dlg = QueryListDialog(mon)
    dlg.state.setCurrentIndex(dlg.state.findData(""))
    dlg.show()
    app.processEvents()
    open_s = time.perf_counter() - t0
    dlg.close()
    study.close()
    yield (f"list the study's {n:,} queries (service)", f"{list_s * 1000:.0f} ms", "")
    yield (f"filter {n:,} queries by site/state/age ({len(found)} match)",
           f"{filter_s * 1000:.0f} ms", "")
    yield (f"query list window open with {n:,} queries", f"{open_s * 1000:.0f} ms", "")

    from crf_app.services.signoff import sign
    from crf_app.services.subjects import list_subjects

    study, inv = open_generated(BENCH_SUBJECTS, "investigator", copy=True)  # site S01
    subject = next(r for r in list_subjects(inv) if r.status == "completed")
    from crf_app.services.forms import form_matrix

    forms = sum(c.status in ("complete", "verified", "signed")
                for c in form_matrix(inv, subject.id).cells.values())
    t0 = time.perf_counter()
    sign(inv, subject.id, scope="casebook", password=PASSWORD, meaning="Reviewed and approved")
    sign_s = time.perf_counter() - t0
    study.close()
    yield (f"sign a casebook of {forms} forms (re-authenticate, hash, write)",
           f"{sign_s * 1000:.0f} ms", "(argon2 at test cost; the real check adds ~0.1 s)")
