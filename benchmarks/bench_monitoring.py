"""Monitoring: the query list over 20,000 queries; signing a casebook of 40 forms."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from benchmarks.common import PASSWORD, bulk_subjects, new_study, timed, tmpdir

N_QUERIES = 20_000
N_FORMS = 40


def _bulk_queries(study, n: int) -> None:
    raw = study.db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        subjects = [r[0] for r in cur.execute("select id from subject order by id")]
        visits = dict(cur.execute("select subject_id, min(id) from visit group by subject_id"))
        now = datetime.now(UTC).replace(tzinfo=None)
        for i in range(n):
            sid = subjects[i % len(subjects)]
            opened = (now - timedelta(days=i % 60)).isoformat(sep=" ")
            state = ("open", "answered", "closed")[i % 3]
            cur.execute("insert into query (subject_id, visit_id, form_instance_id, item_id,"
                        " row_index, target, origin, rule, state, opened_at, opened_by,"
                        " row_version) values (?,?,NULL,?,0,'item',?,'',?,?,?,1)",
                        (sid, visits[sid], "SYSBP", "auto" if i % 2 else "manual", state,
                         opened, "mon"))
            cur.execute("insert into query_message (query_id, at, by, kind, text)"
                        " values (?,?,?,?,?)", (cur.lastrowid, opened, "mon", "open",
                                                 f"Please check value {i}"))
        cur.execute("COMMIT")
    finally:
        raw.close()


def _forty_forms(study, subject_id: int) -> None:
    """40 complete forms of 10 values each on one subject (the visits' scheduled forms and
    extra visits' copies), written directly."""
    raw = study.db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        visit_ids = [r[0] for r in cur.execute(
            "select id from visit where subject_id = ? order by sequence", (subject_id,))]
        forms = ["vital_signs", "nihss", "mrs", "moca", "ham_a", "bdi_ii", "labs", "conmeds"]
        k = 0
        for vid in visit_ids:
            for form_id in forms:
                if k == N_FORMS:
                    break
                cur.execute("insert into form_instance (visit_id, form_id, form_version, status,"
                            " updated_at, updated_by, row_version) values (?,?,1,'complete',"
                            " ?, 'inv', 1)", (vid, form_id, "2026-01-01 00:00:00"))
                fi = cur.lastrowid
                cur.executemany("insert into item_value (form_instance_id, item_id, row_index,"
                                " value) values (?,?,0,?)",
                                [(fi, f"ITEM{j}", str(j)) for j in range(10)])
                k += 1
        cur.execute("COMMIT")
    finally:
        raw.close()


def run():
    study, ctx = new_study(tmpdir() / "monitoring.db")
    bulk_subjects(study, 2_000)
    _bulk_queries(study, N_QUERIES)
    from crf_app.domain.roles import Role
    from crf_app.services.accounts import login
    from crf_app.services.queries import list_queries
    from crf_app.services.setup import NewUser, add_user
    from crf_app.storage.audit import SYSTEM

    add_user(study.db, SYSTEM, NewUser("mon", "Monitor", Role.MONITOR, PASSWORD))
    mon = login(study, "mon", PASSWORD)
    list_s, rows = timed(lambda: list_queries(mon), repeat=3)
    assert len(rows) == N_QUERIES
    filter_s, rows = timed(lambda: list_queries(mon, site="S02", state="open",
                                                 min_age_days=30), repeat=3)
    from crf_app.gui.app import make_application
    from crf_app.gui.query_list import QueryListDialog

    app = make_application()
    t0 = time.perf_counter()
    dlg = QueryListDialog(mon)
    dlg.state.setCurrentIndex(dlg.state.findData(""))
    dlg.show()
    app.processEvents()
    open_s = time.perf_counter() - t0
    yield ("list 20,000 queries (service)", f"{list_s * 1000:.0f} ms", "")
    yield (f"filter 20,000 queries by site/state/age ({len(rows)} match)",
           f"{filter_s * 1000:.0f} ms", "")
    yield ("query list window open with 20,000 queries", f"{open_s * 1000:.0f} ms", "")
    dlg.close()

    from crf_app.services.signoff import sign

    subject_id = 1
    _forty_forms(study, subject_id)
    t0 = time.perf_counter()
    sign(ctx, subject_id, scope="casebook", password=PASSWORD, meaning="Reviewed and approved")
    sign_s = time.perf_counter() - t0
    yield (f"sign a casebook of {N_FORMS} forms (re-authenticate, hash, write)",
           f"{sign_s * 1000:.0f} ms", "(argon2 at test cost; the real check adds ~0.1 s)")
    study.close()
