"""`crf-app demo --subjects N` killed at a random moment leaves a study that verifies: the
generator commits each subject's rows together with its audit events."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from crf_app.integrity import verify_audit
from crf_app.storage.migrate import open_database


def _subjects(path) -> int:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("select count(*) from subject").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_killed_generator_leaves_a_study_that_verifies(tmp_path, seed):
    from crf_app.generator import study as generate

    path = tmp_path / "big.db"
    env = dict(os.environ, CRF_GENERATE_FLUSH_EVENTS="3000")  # many commits in a short run
    proc = subprocess.Popen(
        [sys.executable, "-m", "crf_app", "--database", f"sqlite:///{path}", "demo",
         "--subjects", "150", "--sites", "3"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _subjects(path) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the generator ended before it could be killed"
        time.sleep(random.Random(seed).uniform(0.0, 1.5))  # somewhere after the first commit
        killed_while_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert killed_while_running
    assert _subjects(path) > 0
    db = open_database(f"sqlite:///{path}")
    try:
        report = verify_audit(db)
        assert report.ok, report.text()
    finally:
        db.dispose()
    assert generate.BulkWriter.FLUSH_EVENTS == 60_000  # the setting above is the child's only
