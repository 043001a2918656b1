"""Run every benchmark (or those named on the command line) and print a summary table."""

from __future__ import annotations

import importlib
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

BENCHMARKS = ["bench_startup", "bench_enrol", "bench_subject_list", "bench_forms", "bench_logs",
              "bench_monitoring", "bench_pdf", "bench_odm"]


def main(names: list[str]) -> int:
    rows: list[tuple[str, str, str]] = []
    for name in names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}: {module.__doc__.strip().splitlines()[0]}", flush=True)
        for figure, value, target in module.run():
            print(f"   {figure:<58} {value:>14}   target {target}", flush=True)
            rows.append((figure, value, target))
    print("\n| Figure | Measured | Target |\n|---|---:|---|")
    for figure, value, target in rows:
        print(f"| {figure} | {value} | {target} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
