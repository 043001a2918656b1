"""Run every benchmark (or those named on the command line) and print a summary table.

Each row is a figure, what was measured, its target and whether the target is met ("yes" /
"NO"; empty when the target is not a bound). Each benchmark runs in a process of its own, so
none inherits another's memory or state (a child process forked from a large parent would be
charged its pages). The data come from the generated study (crf_app.generator.study) of
BENCH_SUBJECTS subjects (default 10,000), built once and cached under benchmarks/.cache/; the
benchmarks that write share one working copy of it per run. Timings on a shared machine are
noisy: run twice before trusting one.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

BENCHMARKS = ["bench_generate", "bench_startup", "bench_subject_list", "bench_memory",
              "bench_forms", "bench_enrol", "bench_logs", "bench_monitoring", "bench_pdf",
              "bench_odm"]


def _child(name: str, rows_file: Path) -> int:
    """Run one benchmark in this process; its rows go to `rows_file` (JSON lines)."""
    module = importlib.import_module(f"benchmarks.{name}")
    print(f"== {name}: {module.__doc__.strip().splitlines()[0]}", flush=True)
    from benchmarks.common import verdict

    with rows_file.open("a", encoding="utf-8") as out:
        for figure, value, target in module.run():
            met = verdict(value, target)
            print(f"   {figure:<62} {value:>14}   target {target or '-'}"
                  f"{'   met: ' + met if met else ''}", flush=True)
            out.write(json.dumps([figure, value, target, met]) + "\n")
            out.flush()
    return 0


def main(args: list[str]) -> int:
    if args[:1] == ["--child"]:
        return _child(args[1], Path(args[2]))
    work = Path(tempfile.mkdtemp(prefix="crf-bench-run-"))
    env = dict(os.environ, BENCH_WORKDIR=str(work))  # the shared working copy lives here
    rows: list[list[str]] = []
    try:
        for name in args or BENCHMARKS:
            rows_file = work / f"{name}.jsonl"
            started = time.perf_counter()
            code = subprocess.call([sys.executable, "-m", "benchmarks", "--child", name,
                                    str(rows_file)], env=env)
            got = [json.loads(line) for line in rows_file.read_text(encoding="utf-8")
                   .splitlines()] if rows_file.exists() else []
            if code:
                got.append([f"{name}: FAILED (exit code {code})", "-", "", "NO"])
            rows += got
            print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| Figure | Measured | Target | Met |\n|---|---:|---|:---:|")
    for figure, value, target, met in rows:
        print(f"| {figure} | {value} | {target} | {met} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
