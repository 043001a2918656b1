"""PDF casebooks of the generated study: a casebook of about 40 pages against raw canvas
drawing of the same strings, and a site's batch (about 100 subjects of the 1,000-subject
study) on 2 worker processes with peak memory. Read-only: the cached study is used as is."""

from __future__ import annotations

import io
import multiprocessing
import resource
import tracemalloc
from concurrent.futures import ProcessPoolExecutor

from benchmarks.common import open_generated, timed, tmpdir

N_SUBJECTS = 1000  # the generated study the batch comes from: one site is about 100 subjects
SITE = "S01"
PAGES = 40


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


def _about_forty_pages(admin, renderer):
    """A subject whose casebook has about PAGES pages (pages grow with its audit trail; a
    completed subject's runs to 70 or more): a few candidates by audit-trail length, searched
    by halves, the closest kept."""
    from pypdf import PdfReader
    from sqlalchemy import func, select

    from crf_app.services.casebook import build_casebook
    from crf_app.storage.models import AuditEvent

    with admin.study.db.reading() as s:
        sizes = s.execute(select(AuditEvent.subject_id, func.count())
                          .where(AuditEvent.subject_id.is_not(None))
                          .group_by(AuditEvent.subject_id).order_by(func.count())).all()
    best = None
    lo, hi = 0, len(sizes) - 1
    for _ in range(8):
        mid = (lo + hi) // 2
        sid = sizes[mid][0]
        casebook = build_casebook(admin, sid)
        data = renderer.casebook(casebook, "A4")
        pages = len(PdfReader(io.BytesIO(data)).pages)
        if best is None or abs(pages - PAGES) < abs(best[1] - PAGES):
            best = (sid, pages, casebook, data)
        if pages == PAGES or lo >= hi:
            break
        if pages < PAGES:
            lo = mid + 1
        else:
            hi = mid - 1
    assert best is not None
    return best


def run():
    from pypdf import PdfReader

    from crf_app.exports.pdf import RENDERER
    from crf_app.services.casebook import build_casebook
    from crf_app.services.pdf_export import export_batch

    d = tmpdir()
    study, admin = open_generated(N_SUBJECTS, "admin")  # may export every site

    # one casebook of about 40 pages
    sid, pages, casebook, data = _about_forty_pages(admin, RENDERER)
    reader = PdfReader(io.BytesIO(data))
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
    two = export_batch(admin, SITE, d / "two", renderer=RENDERER, workers=2)
    rss_parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one = export_batch(admin, SITE, d / "one", renderer=RENDERER, workers=1)
    rss_single = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch_pages = sum(len(PdfReader(p).pages) for p in two.written)
    with admin.study.db.reading() as s:
        from sqlalchemy import func, select

        from crf_app.storage.models import AuditEvent

        biggest = s.execute(select(AuditEvent.subject_id).where(
            AuditEvent.subject_id.is_not(None)).group_by(AuditEvent.subject_id)
            .order_by(func.count().desc()).limit(1)).scalar_one()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        rss_worker = pool.submit(_render_peak_kib, build_casebook(admin, biggest)).result()
    study.close()

    number = casebook.subject.screening_number
    yield (f"{pages}-page casebook ({number}, {casebook.subject.status}): gather + render",
           f"{gather_s + render_s:.2f} s", "< 0.5 s")
    yield ("  of which gathering it from the database", f"{gather_s:.3f} s", "")
    yield ("  rendering: pages per second", f"{pages / render_s:.0f} p/s", "")
    yield ("raw canvas drawing the same strings: pages per second",
           f"{pages / canvas_s:.0f} p/s", "baseline")
    yield ("platypus casebook / raw canvas time ratio", f"{render_s / canvas_s:.1f}x",
           "<= 4x")
    yield ("peak Python memory rendering it (tracemalloc)", f"{traced_peak / 1e6:.0f} MB", "")
    yield (f"batch of site {SITE}: {two.total} subjects ({batch_pages} pages), 2 workers",
           f"{two.seconds:.1f} s", "<= 60 s")
    yield (f"batch of {one.total} subjects, 1 process", f"{one.seconds:.1f} s", "")
    yield ("speed-up with 2 workers on 2 cores", f"{one.seconds / two.seconds:.2f}x", ">= 1.5x")
    yield ("peak RSS: main process during the 2-worker batch", _mb(rss_parent),
           f"<= 400 MB (before: {_mb(rss_before)})")
    yield ("peak RSS: a worker process rendering the largest casebook", _mb(rss_worker),
           "<= 300 MB")
    yield ("peak RSS: main process after the 1-process batch", _mb(rss_single), "<= 400 MB")
