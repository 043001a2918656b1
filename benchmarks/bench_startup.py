"""Cold start to the login window (a new Python process each time)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from benchmarks.common import new_study, tmpdir

CHILD = """
import sys
from crf_app.gui.app import make_application
from crf_app.gui.login_dialog import LoginDialog
from crf_app.services.context import open_study
app = make_application()
study = open_study(sys.argv[1])
dlg = LoginDialog(study)
dlg.show()
app.processEvents()
print("shown", flush=True)
"""


def run():
    path = tmpdir() / "startup.db"
    study, _ctx = new_study(path)
    study.close()
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                             text=True, env=env, check=True)
        assert "shown" in out.stdout
        times.append(time.perf_counter() - t0)
    yield ("cold start to login window visible (median of 5)",
           f"{statistics.median(times):.2f} s", "< 0.8 s")
