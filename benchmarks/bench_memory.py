"""The app's memory with the generated study open: peak RSS of a process that opens it, logs in
and shows the main window (offscreen), then opens a subject.

The child logs in for real (on the working copy, so the cached study is not written to) and
reads its own peak resident set (VmHWM: Python, Qt, SQLite's page cache and every library).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.common import BENCH_SUBJECTS, working_copy

CHILD = r"""
import json, sys
from crf_app.services.passwords import use_fast_hashing_for_tests
use_fast_hashing_for_tests()

def peak():
    with open("/proc/self/status", encoding="ascii") as f:
        status = dict(line.split(":", 1) for line in f)
    return {k: int(status[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS")}

from crf_app.gui.app import make_application
app = make_application()
base = peak()
from crf_app.services.accounts import login
from crf_app.services.context import open_study
from crf_app.services.demo import DEMO_PASSWORD
study = open_study(sys.argv[1])
ctx = login(study, "admin", DEMO_PASSWORD)
from crf_app.gui.main_window import MainWindow
win = MainWindow(ctx)
win.show()
app.processEvents()
listed = peak()
rows = win.model.rowCount()
win.select_subject(win.model.row(rows // 2).id)
app.processEvents()
opened = peak()
# a login with the production argon2 cost (64 MiB of memory per check) instead of the test cost
# the benchmark's accounts were created with
from argon2 import PasswordHasher
hasher = PasswordHasher()
hasher.verify(hasher.hash(DEMO_PASSWORD), DEMO_PASSWORD)
argon2 = peak()
print(json.dumps({"rows": rows, "qt": base, "listed": listed, "subject": opened,
                  "argon2": argon2}))
"""


def run():
    path = working_copy(BENCH_SUBJECTS)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                         text=True, env=env, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    n = m["rows"]
    yield (f"app memory, {n:,}-subject study open, main window (peak RSS)",
           f"{m['listed']['VmHWM']:.0f} MB", "< 150 MB")
    yield ("  … after opening a subject (peak RSS)", f"{m['subject']['VmHWM']:.0f} MB",
           "< 150 MB")
    yield ("  resident after opening the subject (RSS now)", f"{m['subject']['VmRSS']:.0f} MB",
           "")
    yield ("  of which Python, Qt and the application object (peak RSS)",
           f"{m['qt']['VmHWM']:.0f} MB", "")
    yield ("  peak RSS once a production-cost argon2 login ran (64 MiB)",
           f"{m['argon2']['VmHWM']:.0f} MB", "")
