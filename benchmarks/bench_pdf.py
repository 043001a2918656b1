"""PDF casebooks: pages per second against raw canvas drawing, a 40-page casebook, a
100-subject batch on 2 worker processes with peak memory."""

from __future__ import annotations

import io
import multiprocessing
import random
import resource
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from decimal import Decimal

from benchmarks.common import PASSWORD, new_study, timed, tmpdir

N_SUBJECTS = 100
ELIGIBLE = {"IE_AGE": "Y", "IE_STROKE": "Y", "IE_ONSET": "Y", "IE_NIHSS": "Y", "IE_CONSENT": "Y",
            "SEX": "M", "EX_ENDO": "N", "EX_PSYCH": "N", "EX_ANX": "N", "EX_MALIG": "N"}
TEXTS = ["Mild headache after the index stroke", "Сухость слизистой носа", "TNF-α and NF-κB "
         "pathway follow-up", "Hypertension, treated since 2015", "Seasonal allergy"]


def _number(item, rng: random.Random) -> str:
    hmin, hmax, smin, smax = item.bounds
    lo = smin if smin is not None else hmin if hmin is not None else Decimal(0)
    hi = smax if smax is not None else (lo * 2 + 10 if hmax is None else min(hmax, lo * 2 + 10))
    if rng.random() < 0.03 and smax is not None and (hmax is None or smax * Decimal("1.2") <= hmax):
        hi = smax * Decimal("1.2")  # now and then out of the expected range: flagged, queried
        lo = smax
    value = lo + (hi - lo) * Decimal(str(round(rng.random(), 3)))
    places = (item.precision or 0) if item.type == "decimal" else 0
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}"


def _value(item, rng: random.Random, day: date):
    t = item.type
    if t in ("integer", "decimal"):
        return _number(item, rng)
    if t in ("choice", "yes_no"):
        return item.codes[0].code if t == "choice" else rng.choice("YN")
    if t == "multi_choice":
        return [item.codes[0].code]
    if t == "date":
        return day.isoformat()
    if t == "partial_date":
        return f"{day.year - rng.randint(1, 8)}-{rng.randint(1, 12):02d}"
    if t == "time":
        return f"{rng.randint(8, 16):02d}:{rng.choice(['00', '15', '30', '45'])}"
    if t == "datetime":
        return f"{day.isoformat()}T09:30"
    return rng.choice(TEXTS)[: item.text_limit]


def fill(form, rng: random.Random, day: date) -> dict:
    """A plausible entry for every item of `form` (3 rows for each repeating section) that
    passes the form's hard checks."""
    from crf_app.domain.forms import validate_form

    if form.id == "eligibility":
        return dict(ELIGIBLE)
    for _ in range(50):
        raw = _entry(form, rng, day)
        if validate_form(form, raw, complete=True).ok:
            return raw
    raise AssertionError(f"no valid entry found for {form.id}")


def _entry(form, rng: random.Random, day: date) -> dict:
    raw: dict = {}
    for section in form.sections:
        if section.repeating:
            raw[section.id] = [{i.id: _value(i, rng, day) for i in section.items
                                if not i.is_computed} for _ in range(3)]
        else:
            raw.update({i.id: _value(i, rng, day) for i in section.items if not i.is_computed})
    return raw


def populate(ctx, n: int, today: date) -> list[int]:
    """n subjects through the services (audited), a quarter each stopping after SCR, BL, D14
    and FU30; every scheduled form of every visit done is filled."""
    from crf_app.domain.subjects import Enrollment
    from crf_app.services.forms import form_library, save_form
    from crf_app.services.subjects import (
        enroll_subject,
        record_visit_date,
        set_baseline,
        subject_detail,
    )

    rng = random.Random(2026)
    protocol, lib = ctx.study.protocol, form_library(ctx.study)
    sites = [s.code for s in protocol.sites]
    ids = []
    for i in range(n):
        last_visit = ["SCR", "BL", "D14", "FU30"][i % 4]
        baseline = today - timedelta(days=40)
        consent = baseline - timedelta(days=5)
        sid = enroll_subject(ctx, Enrollment(f"{sites[i % 3]}-{i + 1:03d}", sites[i % 3], "ABC",
                                             1950 + i % 30, "FM"[i % 2], ["NSX", "PBO"][i % 2],
                                             consent, consent))
        ids.append(sid)
        for number, visit in enumerate(protocol.visits):
            if number == 1:
                set_baseline(ctx, sid, baseline)
            visits = {v.code: v for v in subject_detail(ctx, sid).visits}
            row = visits[visit.code]
            day = row.planned_date or consent + timedelta(days=2)
            record_visit_date(ctx, row.id, day)
            for form_id in visit.forms:
                save_form(ctx, row.id, form_id, fill(lib.get(form_id), rng, day), complete=True)
            if visit.code == last_visit:
                break
    return ids


def _raw_canvas(pages: list[list[str]]) -> bytes:
    """The same strings drawn with the canvas directly: one line each, same font, no layout."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen.canvas import Canvas

    from crf_app.exports.pdf.fonts import SANS, register_fonts

    register_fonts()
    buffer = io.BytesIO()
    c = Canvas(buffer, pagesize=A4, invariant=1)
    for lines in pages:
        c.setFont(SANS, 8)
        y = A4[1] - 40
        for line in lines:
            c.drawString(40, y, line)
            y -= 9.5
        c.showPage()
    c.save()
    return buffer.getvalue()


def _render_peak_kib(casebook) -> int:
    """In a fresh worker process: render one casebook, return the process's peak RSS (KiB).

    Read from VmHWM: getrusage(RUSAGE_CHILDREN) is no use here, as a child forked from a big
    parent is charged the parent's pages before it execs."""
    from crf_app.exports.pdf import RENDERER

    RENDERER.casebook(casebook, "A4")
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _mb(kilobytes: int) -> str:
    return f"{kilobytes / 1024:.0f} MB"  # ru_maxrss is in KiB on Linux


def run():
    from pypdf import PdfReader

    from crf_app.exports.pdf import RENDERER
    from crf_app.services.accounts import login
    from crf_app.services.casebook import build_casebook
    from crf_app.services.pdf_export import export_batch

    d = tmpdir()
    study, inv = new_study(d / "pdf.db")
    admin = login(study, "admin", PASSWORD)  # may export every site
    t0 = time.perf_counter()
    ids = populate(inv, N_SUBJECTS, date.today())
    setup_s = time.perf_counter() - t0

    # one casebook of a subject followed to day 14: about 40 pages
    sid = ids[2]
    casebook = build_casebook(admin, sid)
    data = RENDERER.casebook(casebook, "A4")
    reader = PdfReader(io.BytesIO(data))
    pages = len(reader.pages)
    render_s, _ = timed(lambda: RENDERER.casebook(casebook, "A4"), repeat=5)
    gather_s, _ = timed(lambda: build_casebook(admin, sid), repeat=5)
    lines = [p.extract_text().splitlines() for p in reader.pages]
    canvas_s, _ = timed(lambda: _raw_canvas(lines), repeat=5)
    tracemalloc.start()
    RENDERER.casebook(casebook, "A4")
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # the batch: 2 worker processes first (so the parent's peak below is the batch's), then 1
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    two = export_batch(admin, None, d / "two", renderer=RENDERER, workers=2)
    rss_parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one = export_batch(admin, None, d / "one", renderer=RENDERER, workers=1)
    rss_single = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch_pages = sum(len(PdfReader(p).pages) for p in two.written)
    biggest = max(ids, key=lambda i: len(build_casebook(admin, i).audit))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        rss_worker = pool.submit(_render_peak_kib, build_casebook(admin, biggest)).result()
    study.close()

    yield ("set-up: 100 subjects filled through the services", f"{setup_s:.1f} s", "(not timed)")
    yield (f"casebook render, {pages} pages: pages per second", f"{pages / render_s:.0f} p/s",
           ">= 40 p/s")
    yield ("raw canvas drawing the same strings: pages per second",
           f"{pages / canvas_s:.0f} p/s", "baseline")
    yield ("platypus casebook / raw canvas time ratio", f"{render_s / canvas_s:.1f}x",
           "<= 15x (layout, tables, fonts)")
    yield (f"{pages}-page casebook: gather + render (median of 5)",
           f"{gather_s + render_s:.2f} s", "<= 2 s")
    yield (f"{pages}-page casebook: gather from the database", f"{gather_s:.3f} s", "")
    yield ("peak Python memory rendering it (tracemalloc)", f"{traced_peak / 1e6:.0f} MB", "")
    yield (f"batch of {two.total} subjects ({batch_pages} pages), 2 worker processes",
           f"{two.seconds:.1f} s", "<= 60 s")
    yield (f"batch of {one.total} subjects, 1 process", f"{one.seconds:.1f} s", "")
    yield ("speed-up with 2 workers on 2 cores", f"{one.seconds / two.seconds:.2f}x", ">= 1.5x")
    yield ("peak RSS: main process during the 2-worker batch", _mb(rss_parent),
           f"<= 400 MB (before: {_mb(rss_before)})")
    yield ("peak RSS: a worker process rendering the largest casebook", _mb(rss_worker),
           "<= 300 MB")
    yield ("peak RSS: main process after the 1-process batch", _mb(rss_single), "<= 400 MB")
