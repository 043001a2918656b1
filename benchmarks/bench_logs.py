"""Dosing and AE logs: one audited save, compliance for 10,000 subjects, AE summaries."""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as tod
from decimal import Decimal

from benchmarks.common import (
    BENCH_SUBJECTS,
    bulk_subjects,
    new_study,
    open_generated,
    timed,
    tmpdir,
)

SAVES = 200
SUBJECTS = 10_000
DAYS = 28
AES = 50_000


def _save_figures():
    """Median wall time of record_dose (checks, record, audit, queries) over 200 saves."""
    from crf_app.domain.dosing import DoseInput
    from crf_app.domain.subjects import Enrollment
    from crf_app.services.dosing import record_dose
    from crf_app.services.subjects import enroll_subject

    # new subjects enrolled into the generated study (a working copy): full-size tables
    study, ctx = open_generated(BENCH_SUBJECTS, "investigator", copy=True)
    baseline = ctx.today() - timedelta(days=30)
    subjects = [enroll_subject(ctx, Enrollment(f"S01-L{i:03d}", "S01", "ABC", 1960, "F", "NSX",
                                               baseline - timedelta(days=1),
                                               baseline - timedelta(days=1), baseline))
                for i in range(20)]
    times = []
    for k in range(SAVES):  # 20 subjects × 5 days × 2 administrations
        sid = subjects[k % 20]
        n = k // 20
        raw = DoseInput(date=(baseline + timedelta(days=n // 2)).isoformat(),
                        time="08:00" if n % 2 == 0 else "12:00", dose_mg="0.1",
                        instillations="1", nostril="LEFT" if n % 2 == 0 else "RIGHT",
                        lot="L2026-01", given_by="SELF")
        t0 = time.perf_counter()
        out = record_dose(ctx, sid, raw)
        times.append(time.perf_counter() - t0)
        assert not out.findings
    with study.db.engine.connect() as conn:
        audit = conn.exec_driver_sql(
            "select count(*) from audit_event where entity = 'dose' and subject_id in "
            f"({','.join(str(sid) for sid in subjects)})").scalar()
    study.close()
    return statistics.median(times), max(times), audit // SAVES


def _compliance_figure():
    """Domain compliance over 10,000 subjects × 28 days built in memory (no database)."""
    from crf_app.domain.compliance import compliance
    from crf_app.domain.dosing import DoseRecord
    from crf_app.domain.protocol import load_protocol
    from crf_app.paths import FORMS_DIR

    regimen = load_protocol(FORMS_DIR / "study.yaml").regimen("stroke-tbi")
    rng = random.Random(4)
    start = date(2026, 1, 5)
    dose = Decimal("0.1")
    subjects = []
    for _ in range(SUBJECTS):
        records = []
        for d in range(DAYS):
            day = start + timedelta(days=d)
            if rng.random() < 0.05:
                records.append(DoseRecord(day, None, None, 0, "", "", "", "", True, "Forgot"))
                continue
            records.append(DoseRecord(day, tod(8), dose, 1, "LEFT", "INTRANASAL", "L1", "SELF"))
            records.append(DoseRecord(day, tod(12), dose, 1, "RIGHT", "INTRANASAL", "L1",
                                      "SELF"))
        subjects.append(records)
    end = start + timedelta(days=DAYS - 1)

    def run_all():
        return [compliance(r, regimen, start, end) for r in subjects]

    seconds, results = timed(run_all, repeat=3)
    mean = statistics.fmean(c.percent or 0 for c in results)
    return seconds, sum(len(r) for r in subjects), mean


def _ae_figures():
    """ae_table over 50,000 events in memory, and the study AE report from the database."""
    from crf_app.domain.adverse_events import AE_TERMS, ae_table
    from crf_app.services.reports import ae_table_rows, report_main

    rng = random.Random(9)
    terms = list(AE_TERMS)
    events = [(f"S0{rng.randint(1, 3)}", rng.choice(terms), rng.randint(1, 5),
               rng.random() < 0.05) for _ in range(AES)]
    mem_s, rows = timed(lambda: ae_table(events, by_site=True), repeat=3)
    assert rows[-1].total == AES

    study, _ctx = new_study(tmpdir() / "ae.db")
    bulk_subjects(study, 2000)
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    raw = study.db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        sids = [r[0] for r in cur.execute("select id from subject")]
        seq: dict[int, int] = {}
        batch = []
        for i in range(AES):
            sid = sids[i % len(sids)]
            seq[sid] = seq.get(sid, 0) + 1
            _site, term, grade, serious = events[i]
            batch.append((sid, seq[sid], term, "", "NOT_APPLICABLE", "2026-01-10", 0,
                          ["MILD", "MODERATE", "SEVERE"][min(grade, 3) - 1], grade,
                          int(serious), int(serious), "NONE",
                          "FATAL" if grade == 5 else "RECOVERING", now, "bench"))
        cur.executemany(
            "insert into adverse_event (subject_id, sequence, term, verbatim, location,"
            " start_date, ongoing, severity, grade, serious, sae_hospitalisation, action,"
            " outcome, treatment, flags, flag_text, sae_death, sae_life_threatening,"
            " sae_disability, sae_congenital_anomaly, sae_medically_important, created_at,"
            " created_by, row_version, sae_recorded_at)"
            " values (?,?,?,?,?,?,?,?,?,?,?,?,?,'','','',0,0,0,0,0,?,?,1,NULL)", batch)
        cur.execute("COMMIT")
    finally:
        raw.close()
    db_s, db_rows = timed(lambda: ae_table_rows(study, by_site=True), repeat=3)
    assert db_rows[-1].total == AES
    text_s, _text = timed(lambda: report_main(study, "ae", None, False), repeat=3)
    study.close()
    generated, _ctx = open_generated(BENCH_SUBJECTS)
    gen_s, gen_rows = timed(lambda: ae_table_rows(generated, by_site=True), repeat=3)
    gen_text_s, _text = timed(lambda: report_main(generated, "ae", None, False), repeat=3)
    generated.close()
    return mem_s, db_s, text_s, (gen_s, gen_text_s, gen_rows[-1].total)


def run():
    median_s, worst_s, audit_per_save = _save_figures()
    yield ("record_dose (checks, audit, one transaction): median",
           f"{median_s * 1000:.1f} ms", "< 50 ms (interactive)")
    yield ("record_dose: slowest of 200", f"{worst_s * 1000:.1f} ms",
           f"({audit_per_save} audit rows per save)")
    comp_s, n_records, mean = _compliance_figure()
    yield (f"compliance, {SUBJECTS:,} subjects × {DAYS} days ({n_records:,} records)",
           f"{comp_s * 1000:.0f} ms", f"< 2 s (mean {mean:.1f} %)")
    mem_s, db_s, text_s, (gen_s, gen_text_s, gen_aes) = _ae_figures()
    yield (f"AE term × grade table, {AES:,} events in memory", f"{mem_s * 1000:.0f} ms",
           "< 1 s")
    yield (f"AE term × grade table, {AES:,} events from the database",
           f"{db_s * 1000:.0f} ms", "< 2 s")
    yield ("`report ae` text (table + SAE list) on the same database",
           f"{text_s * 1000:.0f} ms", "< 5 s")
    yield (f"AE term × grade table, generated study ({gen_aes:,} events)",
           f"{gen_s * 1000:.0f} ms", "< 2 s")
    yield ("`report ae` text on the generated study", f"{gen_text_s * 1000:.0f} ms", "< 5 s")
