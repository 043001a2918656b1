"""Enrolling 1,000 subjects through the services (audit included) vs raw sqlite3."""

from __future__ import annotations

import sqlite3
import time
from datetime import date, timedelta

from benchmarks.common import new_study, tmpdir
from crf_app.domain.subjects import Enrollment, schedule

N = 1000


def run():
    d = tmpdir()
    study, ctx = new_study(d / "enrol.db")
    baseline = date.today() - timedelta(days=3)
    t0 = time.perf_counter()
    from crf_app.services.subjects import enroll_subject

    for i in range(N):
        enroll_subject(ctx, Enrollment(f"S01-{i:05d}", "S01", "ABC", 1960, "F", "NSX",
                                       baseline - timedelta(days=2), baseline - timedelta(days=2),
                                       baseline))
    service_s = time.perf_counter() - t0
    with study.db.engine.connect() as conn:
        audit_rows = conn.exec_driver_sql("select count(*) from audit_event").scalar()
    study.close()

    # The same rows (subject, 5 visits, the same number of audit rows) with raw sqlite3,
    # one durable commit per subject as the services do.
    raw_path = d / "raw.db"
    con = sqlite3.connect(raw_path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("create table subject (id integer primary key, sn text unique, initials text,"
                " birth_year int, sex text, arm text, consent text, enrolled text, baseline text,"
                " status text)")
    con.execute("create table visit (id integer primary key, subject_id int, code text,"
                " seq int, planned text, ws text, we text, status text)")
    con.execute("create table audit (id integer primary key, ts text, who text, entity text,"
                " entity_id text, field text, old text, new text, reason text, prev text,"
                " hash text)")
    plan = schedule(study.protocol, baseline)
    per_subject = audit_rows // N
    t0 = time.perf_counter()
    for i in range(N):
        con.execute("BEGIN IMMEDIATE")
        cur = con.execute("insert into subject (sn, initials, birth_year, sex, arm, consent,"
                          " enrolled, baseline, status) values (?,?,?,?,?,?,?,?,?)",
                          (f"S01-{i:05d}", "ABC", 1960, "F", "NSX", "2026-01-01", "2026-01-01",
                           baseline.isoformat(), "on_study"))
        sid = cur.lastrowid
        con.executemany("insert into visit (subject_id, code, seq, planned, ws, we, status)"
                        " values (?,?,?,?,?,?,?)",
                        [(sid, p.code, p.sequence, str(p.planned), str(p.window_start),
                          str(p.window_end), "planned") for p in plan])
        con.executemany("insert into audit (ts, who, entity, entity_id, field, old, new, reason,"
                        " prev, hash) values (?,?,?,?,?,?,?,?,?,?)",
                        [("2026-01-01T00:00:00", "inv", "subject", str(sid), f"f{k}", None,
                          "v", "", "0" * 64, "0" * 64) for k in range(per_subject)])
        con.execute("COMMIT")
    raw_s = time.perf_counter() - t0
    con.close()
    yield ("enrol 1,000 subjects via services: ms per subject",
           f"{service_s / N * 1000:.2f} ms", "(audit included)")
    yield ("same rows with raw sqlite3: ms per subject", f"{raw_s / N * 1000:.2f} ms", "baseline")
    yield ("services / raw sqlite3 ratio", f"{service_s / raw_s:.1f}x", "<= 5x (issue 8)")
