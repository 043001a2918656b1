"""Opening and filtering the subject list on a database of 10,000 subjects."""

from __future__ import annotations

import time

from benchmarks.common import bulk_subjects, new_study, timed, tmpdir

N = 10_000


def run():
    study, ctx = new_study(tmpdir() / "list.db")
    bulk_subjects(study, N)
    from crf_app.gui.app import make_application
    from crf_app.gui.main_window import MainWindow
    from crf_app.services.subjects import list_subjects

    app = make_application()
    query_s, rows = timed(lambda: list_subjects(ctx), repeat=3)
    assert len(rows) == N
    t0 = time.perf_counter()
    win = MainWindow(ctx)
    win.show()
    app.processEvents()
    open_s = time.perf_counter() - t0
    assert win.model.rowCount() == N

    def _filter():
        win.filter.setText("S03-0999")
        app.processEvents()
        n = win.model.rowCount()
        win.filter.setText("")
        app.processEvents()
        return n

    t0 = time.perf_counter()
    win.filter.setText("S03-0999")
    app.processEvents()
    filter_s = time.perf_counter() - t0
    matched = win.model.rowCount()
    win.close()
    study.close()
    yield ("list_subjects() query, 10,000 subjects", f"{query_s * 1000:.0f} ms", "")
    yield ("main window with 10,000-subject list shown", f"{open_s * 1000:.0f} ms", "< 300 ms")
    yield (f"filter 10,000 subjects ({matched} match)", f"{filter_s * 1000:.0f} ms", "< 50 ms")
