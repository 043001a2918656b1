"""Forms: loading every form file, opening the largest forms, saving a 40-item form."""

from __future__ import annotations

import sqlite3
import statistics
import time
from datetime import date, timedelta

from benchmarks.common import new_study, timed, tmpdir
from crf_app.paths import FORMS_DIR

ROWS = 5  # conmeds rows × 8 filled items = 40 item values per save
N_SAVES = 100


def _conmeds_raw(i: int) -> dict:
    rows = [{"CMTRT": f"Medicine {i}-{r}", "CMINDC": "Hypertension", "CMDOSE": "5",
             "CMDOSU": "MG", "CMROUTE": "PO", "CMDOSFRQ": "QD", "CMSTDTC": "2025-03",
             "CMONGO": "Y"} for r in range(ROWS)]
    return {"medications": rows}


def run():
    from crf_app.domain.forms import load_form_library

    load_s, lib = timed(lambda: load_form_library(FORMS_DIR), repeat=5)
    yield (f"load and validate all {len(lib.forms)} form files", f"{load_s * 1000:.0f} ms",
           "start-up")

    study, ctx = new_study(tmpdir() / "forms.db")
    from crf_app.domain.subjects import Enrollment
    from crf_app.services import forms as fsvc
    from crf_app.services import subjects as svc

    base = date.today() - timedelta(days=3)
    visit_ids = []
    for i in range(N_SAVES):
        sid = svc.enroll_subject(ctx, Enrollment(f"S01-{i:04d}", "S01", "ABC", 1960, "F", "NSX",
                                                 base, base))
        visit_ids.append(svc.subject_detail(ctx, sid).visits[0].id)

    # the GUI: open the largest forms
    from crf_app.gui.app import make_application
    from crf_app.gui.form_dialog import FormDialog

    app = make_application()
    bl_visit = _bl(ctx, svc)
    for form_id in ("nihss", "moca", "bdi_ii", "labs"):
        def _open(form_id=form_id):
            dlg = FormDialog(ctx, visit_ids[0] if form_id != "bdi_ii" else bl_visit, form_id)
            dlg.show()
            app.processEvents()
            dlg.dirty = False
            dlg.close()
        open_s, _ = timed(_open, repeat=5)
        n = len(lib.get(form_id).items)
        yield (f"open {form_id} ({n} items) in the GUI", f"{open_s * 1000:.0f} ms", "< 150 ms")

    raw = _conmeds_raw(0)
    form = lib.get("conmeds")
    from crf_app.domain.forms import validate_form

    check_s, res = timed(lambda: validate_form(form, raw, complete=True), repeat=50)
    assert res.ok, res.errors
    yield ("validate a 40-item form (engine only)", f"{check_s * 1000:.2f} ms", "")

    times = []
    for i, vid in enumerate(visit_ids):
        t0 = time.perf_counter()
        fsvc.save_form(ctx, vid, "conmeds", _conmeds_raw(i), complete=True)
        times.append(time.perf_counter() - t0)
    save_ms = statistics.median(times) * 1000
    study.close()

    con = sqlite3.connect(tmpdir() / "raw.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("create table fi (id integer primary key, visit int, form text, status text)")
    con.execute("create table iv (id integer primary key, fi int, item text, row int, v text)")
    con.execute("create table audit (id integer primary key, ts text, who text, entity text,"
                " eid text, field text, old text, new text, reason text, prev text, hash text)")
    raw_times = []
    for i in range(N_SAVES):
        rows = [(item, r, v) for r, row in enumerate(_conmeds_raw(i)["medications"])
                for item, v in row.items()]
        t0 = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        fi = con.execute("insert into fi (visit, form, status) values (?,?,?)",
                         (i, "conmeds", "complete")).lastrowid
        con.executemany("insert into iv (fi, item, row, v) values (?,?,?,?)",
                        [(fi, a, b, c) for a, b, c in rows])
        con.executemany("insert into audit (ts, who, entity, eid, field, old, new, reason, prev,"
                        " hash) values (?,?,?,?,?,?,?,?,?,?)",
                        [("t", "inv", "item", str(fi), a, None, c, "", "0" * 64, "0" * 64)
                         for a, _b, c in rows])
        con.execute("COMMIT")
        raw_times.append(time.perf_counter() - t0)
    con.close()
    raw_ms = statistics.median(raw_times) * 1000
    yield ("save a 40-item form with checks and audit (median)", f"{save_ms:.1f} ms", "< 10 ms")
    yield ("same rows with raw sqlite3 (median)", f"{raw_ms:.2f} ms", "baseline")
    yield ("save / raw sqlite3 ratio", f"{save_ms / raw_ms:.1f}x", "<= 5x")


def _bl(ctx, svc):
    from crf_app.domain.subjects import Enrollment

    base = date.today() - timedelta(days=3)
    sid = svc.enroll_subject(ctx, Enrollment("S01-9999", "S01", "XYZ", 1960, "F", "NSX", base,
                                             base, base))
    return svc.subject_detail(ctx, sid).visits[1].id
