"""The subject list of the generated study: the query, the main window shown, the filter.

The window is built as after a login: its modules are imported (the app imports them behind the
login window) and a first window was built once in this process; each figure is the median of
several windows, each deleted before the next.
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import BENCH_SUBJECTS, open_generated, timed

WINDOWS = 3


def _close(app, win) -> None:
    win.close()
    win.deleteLater()
    app.processEvents()


def run():
    study, ctx = open_generated(BENCH_SUBJECTS, "admin")  # every site
    import crf_app.gui.export_dialog  # noqa: F401 - imported behind the login in the app
    from crf_app.gui.app import make_application
    from crf_app.gui.main_window import MainWindow
    from crf_app.services.subjects import list_subjects

    app = make_application()
    query_s, rows = timed(lambda: list_subjects(ctx), repeat=5)
    n = len(rows)
    assert n == BENCH_SUBJECTS
    times = []
    for k in range(WINDOWS + 1):
        t0 = time.perf_counter()
        win = MainWindow(ctx)
        win.show()
        app.processEvents()
        times.append(time.perf_counter() - t0)
        assert win.model.rowCount() == n
        if k < WINDOWS:
            _close(app, win)
    first, open_s = times[0], statistics.median(times[1:])

    def _filter(text: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        win.filter.setText(text)
        app.processEvents()
        return time.perf_counter() - t0, win.model.rowCount()

    needle = rows[len(rows) // 2].screening_number
    first_filter_s, matched = _filter(needle)  # builds the search strings
    _filter("")
    filters = []
    for text in (needle, "s04-", "withdrawn", ""):
        filters.append(_filter(text)[0])
    t0 = time.perf_counter()
    win.select_subject(rows[0].id)  # the first subject opened builds the subject view
    app.processEvents()
    first_subject_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    win.select_subject(rows[len(rows) // 3].id)
    app.processEvents()
    next_subject_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    win.filter.setText("completed")
    app.processEvents()
    selected_filter_s = time.perf_counter() - t0
    _close(app, win)
    study.close()
    yield (f"list_subjects() query, {n:,} subjects (median of 5)", f"{query_s * 1000:.0f} ms",
           "")
    yield (f"main window with the {n:,}-subject list shown (median of {WINDOWS})",
           f"{open_s * 1000:.0f} ms", "< 300 ms")
    yield ("  the first window of the process (one-off Qt set-up)", f"{first * 1000:.0f} ms",
           "")
    yield (f"filter {n:,} subjects, first time ({matched} match)",
           f"{first_filter_s * 1000:.0f} ms", "< 50 ms")
    yield ("filter again (median: a number, a site, a status, cleared)",
           f"{statistics.median(filters) * 1000:.0f} ms", "< 50 ms")
    yield ("filter with a subject selected (kept selected)", f"{selected_filter_s * 1000:.0f} ms",
           "< 50 ms")
    yield ("open a subject from the list, the first (builds its view)",
           f"{first_subject_s * 1000:.0f} ms", "")
    yield ("  open another subject", f"{next_subject_s * 1000:.0f} ms", "")
