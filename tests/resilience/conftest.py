"""Fixtures of the resilience tests: the fork server whose workers get killed, and helpers."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("child.py")


class Workers:
    """The fork server (tests/resilience/child.py serve) and its workers."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(CHILD), "serve"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._buffer = b""
        assert self._reply(60) == "READY"

    def _reply(self, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("the fork server did not answer")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the fork server died (exit {self.proc.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _send(self, cmd: dict) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        return self._reply()

    def start(self, job: str, log: Path, **spec) -> int:
        """Fork a worker running `job`; its progress lines go to `log`. Returns its pid."""
        return int(self._send({"job": job, "log": str(log), **spec}))

    def wait(self, pid: int) -> str:
        """Wait for a worker to end: "killed" (SIGKILL) or "exit N"."""
        return self._send({"wait": pid})

    def kill(self, pid: int) -> str:
        os.kill(pid, signal.SIGKILL)  # a worker that already ended is a zombie until waited
        return self.wait(pid)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def workers():
    if not hasattr(os, "fork"):
        pytest.skip("needs fork and SIGKILL (POSIX)")
    server = Workers()
    yield server
    server.close()


def log_lines(log: Path) -> list[str]:
    """The complete lines a worker wrote (a line is one write(), so never half there)."""
    if not log.exists():
        return []
    text = log.read_text(encoding="utf-8")
    return text.split("\n")[:-1]


def wait_for_line(log: Path, prefix: str, timeout: float = 30) -> list[str]:
    """Poll the log until a line starts with `prefix` (or the job failed); returns the lines."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log_lines(log)
        errors = [line for line in lines if line.startswith("ERROR")]
        assert not errors, errors[0]
        if any(line.startswith(prefix) for line in lines):
            return lines
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {prefix!r} in {log}: {lines}")
        time.sleep(0.002)


def enroll_with_visits(ctx, screening_number: str) -> list[int]:
    """Enrol a subject at S01 with a baseline date; returns the ids of its visits."""
    from crf_app.domain.subjects import Enrollment
    from crf_app.services import subjects as svc

    sid = svc.enroll_subject(ctx, Enrollment(screening_number, "S01", "ABC", 1960, "F", "NSX",
                                             date(2026, 11, 1), date(2026, 11, 1),
                                             date(2026, 11, 2)))
    return [v.id for v in svc.subject_detail(ctx, sid).visits]
