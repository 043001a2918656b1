"""ODM 1.3.2 import and export of a 1,000-subject study: time and peak memory.

The source file is written by crf-app's own ODM writer from generated records (every subject
enrolled, five visits, vital signs and NIHSS at each, a concomitant-medication table, about
10 % of the values corrected with a reason; the dosing log of a 14-day course, two
administrations a day with a few missed; an adverse event for about a third of the subjects,
some corrected; a casebook signature), so it carries what a laptop's transactional file
carries. It is then imported (merged) into an empty study database, and that study exported
again. Each step runs in its own process so its memory is measured alone: the process's peak
resident set (ru_maxrss, which includes lxml's and SQLite's C memory) and, in a separate run
because tracemalloc slows Python several times, the Python heap peak.
BENCH_ODM_LOGS=0 leaves the logs and signatures out (what the files held before they did).
Importing and exporting 250 and 1,000 subjects shows whether memory grows with the study.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from benchmarks.common import PASSWORD, new_study, tmpdir

N = 1000
ROOT = Path(__file__).resolve().parent.parent
LOGS = os.environ.get("BENCH_ODM_LOGS", "1") != "0"

CHILD = r"""
import json, resource, sys, time, tracemalloc
from pathlib import Path
from crf_app.services.passwords import use_fast_hashing_for_tests
use_fast_hashing_for_tests()
from crf_app.services.accounts import login
from crf_app.services.context import open_study
op, db, path, password, heap = sys.argv[1:6]
study = open_study(db)
ctx = login(study, "admin", password)
if op == "import":
    from crf_app.services.odm_import import import_odm as run
    options = {}
else:
    from crf_app.services.odm_export import export_odm as run
    options = {"snapshot": op == "snapshot"}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if heap == "1":
    tracemalloc.start()
t0, c0 = time.perf_counter(), time.process_time()
result = run(ctx, Path(path), **options)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = tracemalloc.get_traced_memory()[1] if heap == "1" else 0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
study.close()
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "py_peak_mb": peak / 2**20,
                  "rss_growth_mb": (after - before) / 1024, "rss_peak_mb": after / 1024}))
"""


def _child(op: str, db: Path, path: Path, heap: bool = False) -> dict:
    """Run one import or export in a fresh process (tracemalloc only when `heap`: it slows
    Python down several times, so times are measured without it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHILD, op, str(db), str(path), PASSWORD,
                          "1" if heap else "0"],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{op} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _records(study, n: int, seed: int = 11):
    """Generated SubjectRecords with realistic audited histories."""
    from crf_app import odm as oe
    from crf_app.domain.forms import validate_form
    from crf_app.services.demo import _nihss, _vitals
    from crf_app.services.forms import flatten, form_library

    rng = random.Random(seed)
    lib = form_library(study)
    protocol = study.protocol
    sites = [s.code for s in protocol.sites]
    vital, nihss, conmeds = lib.get("vital_signs"), lib.get("nihss"), lib.get("conmeds")
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    for i in range(n):
        site = sites[i % len(sites)]
        sn = f"{site}-{i + 1:05d}"
        t = start + timedelta(minutes=37 * i)
        consent = t.date()
        baseline = consent + timedelta(days=3)

        def created(value, at, user="inv"):
            return oe.Cell("", value, [oe.Change(at, user, value)], complete_history=True)

        fields = []
        for f, value in (("SITE", site), ("INITIALS", "ABC"), ("BRTHYR", str(1940 + i % 45)),
                         ("SEX", "FM"[i % 2]), ("ARM", "NSX" if i % 2 else "PBO"),
                         ("RFICDTC", consent.isoformat()), ("ENRLDT", consent.isoformat()),
                         ("SUBJSTAT", "screening")):
            cell = created(value, t)
            cell.item_id = f
            fields.append(cell)
        bl_at = t + timedelta(days=3)
        fields.append(oe.Cell("BASEDT", baseline.isoformat(),
                              [oe.Change(bl_at, "inv", baseline.isoformat())], True))
        fields[-2].value = "on_study"
        fields[-2].history.append(oe.Change(bl_at, "inv", "on_study", old="screening"))
        rec = oe.SubjectRecord(sn, site, fields)
        from crf_app.domain.subjects import schedule

        for pv in schedule(protocol, baseline):
            v_at = datetime.combine(pv.planned, datetime.min.time(), UTC) + timedelta(hours=10)
            vrec = oe.VisitRecord(pv.code, [
                oe.Cell("PLANDT", pv.planned.isoformat(),
                        [oe.Change(bl_at, "inv", pv.planned.isoformat())], True),
                oe.Cell("VISDT", pv.planned.isoformat(),
                        [oe.Change(v_at, "inv", pv.planned.isoformat())], True),
                oe.Cell("VISSTAT", "done", [oe.Change(v_at, "inv", "done", old="planned")],
                        True)])
            forms = [(vital, _vitals(rng)), (nihss, _nihss(rng, 10))]
            if pv.code == "SCR":
                forms.append((conmeds, {"medications": [
                    {"CMTRT": "Aspirin", "CMINDC": "Secondary prevention", "CMDOSE": "100",
                     "CMDOSU": "mg", "CMROUTE": "PO", "CMDOSFRQ": "QD", "CMSTDTC": "2025-03",
                     "CMONGO": "Y"},
                    {"CMTRT": "Atorvastatin", "CMINDC": "Hyperlipidaemia", "CMDOSE": "40",
                     "CMDOSU": "mg", "CMROUTE": "PO", "CMDOSFRQ": "QD", "CMSTDTC": "2024",
                     "CMONGO": "Y"}]}))
            for form, raw in forms:
                result = validate_form(form, raw, complete=True)
                assert result.ok, result.errors
                f_at = v_at + timedelta(minutes=20)
                frec = oe.FormRecord(form.id, "complete", f_at, "inv")
                for (item, row), value in sorted(flatten(form, result.values).items()):
                    history = [oe.Change(f_at, "inv", value)]
                    if rng.random() < 0.1 and form is vital and item in ("PULSE", "DIABP"):
                        first = str(int(value) + 1)
                        history = [oe.Change(f_at, "inv", first),
                                   oe.Change(f_at + timedelta(hours=2), "inv", value,
                                             "transcription error", old=first)]
                    frec.cells.append(oe.Cell(item, value, history, row, True))
                vrec.forms.append(frec)
            rec.visits.append(vrec)
        if LOGS:
            _logs(rec, rng, baseline, bl_at)
        yield rec


def _logs(rec, rng: random.Random, baseline: date, bl_at: datetime) -> None:
    """A 14-day course (two administrations a day, a few missed), maybe an adverse event, and
    the casebook signature."""
    from crf_app import odm as oe

    def row(log, values: dict, at: datetime, changes: dict | None = None):
        cells = []
        for f in log.fields:
            value = values.get(f.attr)
            if value is None:
                continue
            history = [oe.Change(at, "inv", value)] if f.audited else []
            if changes and f.attr in changes:
                history.append(oe.Change(at + timedelta(days=1), "inv", changes[f.attr],
                                         "corrected from the source", old=value))
                value = changes[f.attr]
            cells.append(oe.Cell(f.item_id, value, history, complete_history=True))
        return cells

    for day in range(14):
        at = datetime.combine(baseline + timedelta(days=day), datetime.min.time(), UTC) + \
            timedelta(hours=19, microseconds=day)
        missed = rng.random() < 0.03
        for k, hour in enumerate(("08:00:00", "12:00:00"), start=1):
            values = {"date": (baseline + timedelta(days=day)).isoformat(), "time": hour,
                      "route": "INTRANASAL", "missed": "Y" if missed else "N",
                      "instillations": "0" if missed else "1", "created_by": "inv",
                      "created_at": at.isoformat()}
            if missed:
                values["missed_reason"] = "Subject forgot"
            else:
                values.update(dose_mg="0.1", dose_unit="mg", nostril=("LEFT", "RIGHT")[k - 1],
                              lot="LOT-2601A", given_by="SELF")
            rec.logs.append(oe.LogRow("dose", oe.log_row_key(at, "inv", k),
                                      row(oe.DOSE_LOG, values, at), at, "inv"))
    if rng.random() < 0.33:
        at = bl_at + timedelta(days=2, minutes=rng.randrange(600))
        values = {"sequence": "1", "term": "HEADACHE", "location": "NOT_APPLICABLE",
                  "start_date": (baseline + timedelta(days=2)).isoformat(), "ongoing": "N",
                  "end_date": (baseline + timedelta(days=4)).isoformat(), "severity": "MILD",
                  "grade": "1", "serious": "N", "relationship": "POSSIBLE", "action": "NONE",
                  "outcome": "RECOVERED", "created_by": "inv", "created_at": at.isoformat()}
        changes = {"severity": "MODERATE", "grade": "2"} if rng.random() < 0.2 else None
        rec.logs.append(oe.LogRow("adverse_event", oe.log_row_key(at, "inv", 1),
                                  row(oe.AE_LOG, values, at, changes),
                                  at + timedelta(days=1 if changes else 0), "inv"))
    signed = bl_at + timedelta(days=45)
    rec.signatures.append(oe.SignatureRecord(
        "casebook", None, None, "inv", "Investigator", "Responsible investigator sign-off",
        signed, "0" * 64, 15, "valid"))


def write_source(study, path: Path, n: int) -> None:
    """A transactional crf-app ODM file of `n` generated subjects."""
    from crf_app import odm as oe
    from crf_app.odm import write_odm
    from crf_app.services.forms import form_library

    plan = oe.ExportPlan(
        study_oid=study.oid, title=study.title, protocol=study.protocol,
        library=form_library(study), metadata_version=study.metadata_version,
        study_created=date(2026, 1, 1), file_oid=f"{study.oid}.BENCHLAPTOP.T00001",
        prior_file_oid=None, file_type=oe.TRANSACTIONAL,
        created_at=datetime(2026, 11, 24, tzinfo=UTC), originator="crf-app node BENCHLAPTOP",
        description="benchmark source", users=[("inv", "Investigator")],
        sites=[(s.code, s.name) for s in study.protocol.sites], subject_count=n,
        subjects=_records(study, n), signature_meanings=["Responsible investigator sign-off"])
    with path.open("wb") as fh:
        write_odm(fh, plan)


def _study_of(d: Path, n: int) -> tuple[Path, dict]:
    """A source file of `n` subjects imported into an empty study; returns (db, import)."""
    source, _ = new_study(d / f"source-{n}.db")
    src = d / f"laptop-{n}.xml"
    write_source(source, src, n)
    source.close()
    target, _ = new_study(d / f"study-{n}.db")
    target.close()
    return d / f"study-{n}.db", _child("import", d / f"study-{n}.db", src)


def run():
    d = tmpdir()
    t0 = time.perf_counter()
    probe, _ = new_study(d / "probe.db")
    write_source(probe, d / "probe.xml", N)
    gen_s = time.perf_counter() - t0
    probe.close()
    size = (d / "probe.xml").stat().st_size / 2**20
    big, imp = _study_of(d, N)
    small, imp_small = _study_of(d, N // 4)
    exp = _child("export", big, d / "export-1000.xml")
    exp_small = _child("export", small, d / "export-250.xml")
    heap = _child("snapshot", big, d / "snapshot-1000.xml", heap=True)
    heap_small = _child("snapshot", small, d / "snapshot-250.xml", heap=True)
    what = "with" if LOGS else "without"
    yield (f"write a 1,000-subject transactional file {what} logs (writer)", f"{gen_s:.1f} s",
           f"({size:.0f} MB)")
    yield ("import (merge) 1,000 subjects: time (CPU time)",
           f"{imp['seconds']:.1f} s ({imp['cpu_seconds']:.1f} s)", "< 20 s")
    yield ("import: ms per subject with 1,000 / with 250 subjects",
           f"{imp['seconds'] / N * 1000:.0f} / {imp_small['seconds'] / (N // 4) * 1000:.0f} ms",
           "equal (linear)")
    yield ("import: process peak RSS with 1,000 / with 250 subjects",
           f"{imp['rss_peak_mb']:.0f} / {imp_small['rss_peak_mb']:.0f} MB",
           "< 250 MB, equal (streamed)")
    yield ("export 1,000 subjects (transactional): time (CPU time)",
           f"{exp['seconds']:.1f} s ({exp['cpu_seconds']:.1f} s)", "< 20 s")
    yield ("export: process peak RSS with 1,000 / with 250 subjects",
           f"{exp['rss_peak_mb']:.0f} / {exp_small['rss_peak_mb']:.0f} MB",
           "< 250 MB, equal (streamed)")
    yield ("export: Python heap peak with 1,000 / with 250 subjects",
           f"{heap['py_peak_mb']:.0f} / {heap_small['py_peak_mb']:.0f} MB", "equal (streamed)")
