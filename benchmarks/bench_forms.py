"""Forms: loading every form file, opening the largest forms, saving a 40-item form.

On the generated study (a working copy): the forms opened are a completed subject's filled
ones; the saves go to new subjects enrolled into it, so every table is the 10,000-subject
study's size.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import statistics
import time
from datetime import UTC, date, datetime, timedelta

from benchmarks.common import BENCH_SUBJECTS, open_generated, timed
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

    study, ctx = open_generated(BENCH_SUBJECTS, "investigator", copy=True)  # site S01
    from crf_app.domain.subjects import Enrollment
    from crf_app.services import forms as fsvc
    from crf_app.services import subjects as svc

    base = date.today() - timedelta(days=3)
    visit_ids, subjects = [], []  # N_SAVES new subjects for the services, N_SAVES for raw
    for i in range(2 * N_SAVES):
        number = f"S01-B{i:04d}"
        sid = svc.enroll_subject(ctx, Enrollment(number, "S01", "ABC", 1960, "F", "NSX", base,
                                                 base))
        visit_ids.append(svc.subject_detail(ctx, sid).visits[0].id)
        subjects.append((sid, number))

    # the GUI: open the largest forms, filled, of a completed subject
    from crf_app.gui.app import make_application
    from crf_app.gui.form_dialog import FormDialog

    app = make_application()
    visits = _completed_visits(ctx, svc)
    for form_id in ("nihss", "moca", "bdi_ii", "labs"):
        def _open(form_id=form_id):
            dlg = FormDialog(ctx, visits["D14"], form_id)
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

    # the raw baseline writes into this very database after the saves, for the other new
    # subjects: same tables, indexes, triggers and foreign keys, same durability
    raw_db = study.db.path

    times = []
    for i, vid in enumerate(visit_ids[:N_SAVES]):
        t0 = time.perf_counter()
        fsvc.save_form(ctx, vid, "conmeds", _conmeds_raw(i), complete=True)
        times.append(time.perf_counter() - t0)
    save_ms = statistics.median(times) * 1000
    study.close()

    raw_ms = _raw_saves(raw_db, visit_ids[N_SAVES:], subjects[N_SAVES:], ctx.user.actor, form)
    yield ("save a 40-item form with checks and audit (median)", f"{save_ms:.1f} ms", "< 10 ms")
    yield ("same rows with raw sqlite3 (median)", f"{raw_ms:.2f} ms", "baseline")
    yield ("save / raw sqlite3 ratio", f"{save_ms / raw_ms:.1f}x", "<= 5x")


def _raw_saves(path, visit_ids, subjects, actor, form) -> float:
    """The rows one save writes, with raw sqlite3 in one transaction: the form instance, its 40
    item values and their 41 audit events (40 items and the form's status), hash-chained with
    the same canonical encoding. Same pragmas as the app's engine (WAL, synchronous=FULL,
    foreign keys on, BEGIN IMMEDIATE). Returns the median milliseconds per save."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA busy_timeout=10000")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")

    def sha(prev, row):
        blob = json.dumps([prev, *row], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    from crf_app.domain.forms import validate_form
    from crf_app.services.forms import flatten

    raw_times = []
    for i, vid in enumerate(visit_ids):
        # the values as the engine stores them (canonical text), worked out before timing
        values = flatten(form, validate_form(form, _conmeds_raw(i), complete=True).values)
        rows = [(item, r, v) for (item, r), v in values.items()]
        subject_id, screening = subjects[i]
        label = f"{screening}/SCR/conmeds"
        t0 = time.perf_counter()
        now = datetime.now(UTC)
        at_iso = now.isoformat(timespec="microseconds")
        at_db = now.replace(tzinfo=None).isoformat(" ", "microseconds")
        con.execute("BEGIN IMMEDIATE")
        prev = con.execute("select hash from audit_event order by id desc limit 1").fetchone()
        prev = prev[0] if prev else "0" * 64
        fi = con.execute("insert into form_instance (visit_id, form_id, form_version, status,"
                         " updated_at, updated_by, row_version) values (?,?,?,?,?,?,?)",
                         (vid, form.id, form.version, "complete", at_db, actor.username,
                          2)).lastrowid
        con.executemany("insert into item_value (form_instance_id, item_id, row_index, value)"
                        " values (?,?,?,?)", [(fi, a, b, c) for a, b, c in rows])
        events = [("create", "item", f"{label}/{a}[{b + 1}]", a, None, c, "")
                  for a, b, c in sorted(rows, key=lambda r: (r[0], r[1]))]
        events.append(("update", "form", label, "status", "not_started", "complete", ""))
        audit = []
        for action, entity, eid, fld, old, new, reason in events:
            h = sha(prev, [at_iso, actor.user_id, actor.username, action, entity, eid, fld,
                           old, new, reason, subject_id])
            audit.append((at_db, actor.user_id, actor.username, action, entity, eid, fld, old,
                          new, reason, subject_id, prev, h))
            prev = h
        con.executemany("insert into audit_event (occurred_at, user_id, username, action,"
                        " entity, entity_id, field, old_value, new_value, reason, subject_id,"
                        " prev_hash, hash) values (?,?,?,?,?,?,?,?,?,?,?,?,?)", audit)
        con.execute("COMMIT")
        raw_times.append(time.perf_counter() - t0)
    con.close()
    return statistics.median(raw_times) * 1000


def _completed_visits(ctx, svc) -> dict[str, int]:
    """{visit code: visit id} of the user's site's first completed subject."""
    subject = next(r for r in svc.list_subjects(ctx) if r.status == "completed")
    return {v.code: v.id for v in svc.subject_detail(ctx, subject.id).visits}
