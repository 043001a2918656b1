"""Cold start to the login window (a new Python process each time), on the generated study.

The child runs what `crf-app` runs: the command-line module's imports, then the GUI's start-up
(crf_app.gui.app.show_login); "visible" is when the login window has been shown and painted.
The study keeps opening behind the window: "study open" is when its title is shown and a login
can be checked (a login typed before that goes ahead then).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from benchmarks.common import BENCH_SUBJECTS, generated_db

RUNS = 5
CHILD = """
import sys, time
import crf_app.cli  # the entry point's own imports, as `crf-app` runs them
from crf_app.gui.app import show_login
app, dlg = show_login(sys.argv[1])
app.processEvents()
print("shown", flush=True)
while dlg.study is None and dlg.open_error is None:
    app.processEvents()
    time.sleep(0.002)
print("open" if dlg.open_error is None else f"error {dlg.open_error}", flush=True)
"""


def _once(path, env) -> tuple[float, float]:
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    assert child.stdout is not None
    shown = child.stdout.readline()
    t_shown = time.perf_counter() - t0
    opened = child.stdout.readline()
    t_open = time.perf_counter() - t0
    child.wait()
    assert shown.strip() == "shown" and opened.strip() == "open", (shown, opened)
    return t_shown, t_open


def run():
    path = generated_db(BENCH_SUBJECTS)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    _once(path, env)  # the first run after the build reads the file into the page cache
    shown, opened = zip(*(_once(path, env) for _ in range(RUNS)), strict=True)
    yield (f"cold start to login window visible (median of {RUNS})",
           f"{statistics.median(shown):.2f} s", "< 0.8 s")
    yield (f"  slowest of {RUNS}", f"{max(shown):.2f} s", "")
    yield (f"  … to the {BENCH_SUBJECTS:,}-subject study open behind it (median)",
           f"{statistics.median(opened):.2f} s", "(the user is typing)")
