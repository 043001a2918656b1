"""Exporting PDF CRFs: one subject's casebook, a batch (a site or the whole study), the blank
CRF book.

Every file is written to a temporary name in the target folder, flushed to disk and renamed
into place (`os.replace`), so a reader never sees a half-written PDF: a failure or a cancelled
batch leaves only whole files.

The PDFs are drawn by `crf_app.exports.pdf.RENDERER`, which the services cannot import (the
exports sit above them in the layers). The entry point installs it once with
`use_renderer(RENDERER)`; a call may also pass `renderer=` itself (tests do).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from crf_app.domain.casebook import BlankBook, Casebook
from crf_app.domain.errors import CrfError, NotFound
from crf_app.domain.roles import Action
from crf_app.services.casebook import build_blank_book, build_casebook
from crf_app.services.context import UserContext
from crf_app.services.subjects import list_subjects

PAGE_SIZES = ("A4", "Letter")
ProgressCallback = Callable[[int, int, str], None]  # (done, total, subject being exported)


class ExportError(CrfError):
    """A PDF could not be written: the folder, its permissions, the disk, or a bad option."""


class PdfRenderer(Protocol):
    """What renders the PDFs (crf_app.exports.pdf.RENDERER); must pickle for worker processes."""

    def casebook(self, casebook: Casebook, page_size: str) -> bytes: ...

    def blank_book(self, book: BlankBook, annotated: bool, page_size: str) -> bytes: ...


_installed: PdfRenderer | None = None


def use_renderer(renderer: PdfRenderer | None) -> None:
    """Install the renderer every export uses unless given one (None uninstalls it)."""
    global _installed
    _installed = renderer


def _renderer(renderer: PdfRenderer | None) -> PdfRenderer:
    """The renderer given, else the installed one, else ReportLab's (imported on first use)."""
    chosen = renderer or _installed
    if chosen is None:
        from crf_app.exports.pdf import RENDERER

        chosen = RENDERER
    return chosen


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class BatchResult:
    """What a batch did: the files written (whole), how many subjects it had, cancelled."""

    total: int
    written: list[Path] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0


def check_page_size(page_size: str) -> str:
    """'A4' or 'Letter' (any case); ExportError otherwise."""
    for name in PAGE_SIZES:
        if str(page_size).lower() == name.lower():
            return name
    raise ExportError(f"page size {page_size!r} is not supported; use A4 or Letter")


def check_folder(out_dir: str | os.PathLike[str]) -> Path:
    """The output folder, created if missing; ExportError naming it if it cannot be written."""
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ExportError(f"cannot export to {path}: it is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the folder {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ExportError(f"the folder {path} is not writable (permission denied); "
                          "choose another folder")
    return path


def write_atomically(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise ExportError(f"cannot write to the folder {path.parent}: "
                          f"{exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def casebook_filename(study_id: str, screening_number: str) -> str:
    """'NASEMAX-PSR-01_S01-004_casebook.pdf' (only safe characters)."""
    return f"{_UNSAFE.sub('_', study_id)}_{_UNSAFE.sub('_', screening_number)}_casebook.pdf"


def subject_id_for(ctx: UserContext, ident: str | int) -> int:
    """The database id of the subject named by a screening number ('S01-004') or an id."""
    text = str(ident).strip()
    rows = list_subjects(ctx)
    for row in rows:
        if row.screening_number.casefold() == text.casefold():
            return row.id
    if text.isdigit() and any(row.id == int(text) for row in rows):
        return int(text)
    raise NotFound(f"subject {text!r} does not exist in this study (give a screening number "
                   "such as S01-004)")


def export_subject_pdf(ctx: UserContext, subject_id: int, out_dir: str | os.PathLike[str],
                       page_size: str = "A4", *, renderer: PdfRenderer | None = None
                       ) -> Path:
    """Write one subject's casebook into `out_dir`; returns the file written.

    NotFound for an unknown subject id, PermissionDenied without the export right at the
    subject's site, ExportError for a folder that cannot be written (no file is left)."""
    renderer = _renderer(renderer)
    size = check_page_size(page_size)
    folder = check_folder(out_dir)
    casebook = build_casebook(ctx, subject_id)
    data = _rendered(casebook, lambda: renderer.casebook(casebook, size))
    name = casebook_filename(casebook.study.study_id, casebook.subject.screening_number)
    return write_atomically(folder / name, data)


def blank_book(ctx: UserContext, annotated: bool = False, page_size: str = "A4", *,
               renderer: PdfRenderer | None = None) -> bytes:
    """The blank CRF book (or the annotated CRF) as PDF bytes."""
    size = check_page_size(page_size)
    return _renderer(renderer).blank_book(build_blank_book(ctx), annotated, size)


def export_blank_book(ctx: UserContext, out_dir: str | os.PathLike[str],
                      annotated: bool = False, page_size: str = "A4", *,
                      renderer: PdfRenderer | None = None) -> Path:
    """Write the blank (or annotated) CRF book into `out_dir`; returns the file written."""
    folder = check_folder(out_dir)
    data = blank_book(ctx, annotated, page_size, renderer=renderer)
    kind = "annotated_crf" if annotated else "blank_crf_book"
    return write_atomically(folder / f"{_UNSAFE.sub('_', ctx.study.protocol.study_id)}_"
                                      f"{kind}.pdf", data)


def _rendered(casebook: Casebook, render: Callable[[], bytes]) -> bytes:
    """The PDF bytes, or an ExportError naming the subject whose casebook failed to render."""
    try:
        return render()
    except CrfError:
        raise
    except Exception as exc:
        raise ExportError(f"the casebook of subject {casebook.subject.screening_number} could "
                          f"not be rendered: {type(exc).__name__}: {exc}") from exc


PARALLEL_FROM = 8  # fewer subjects render faster in-process than worker processes start


def auto_workers(subjects: int) -> int:
    """Worker processes for a batch: 1 for a few subjects, else one per CPU (at most 4)."""
    if subjects < PARALLEL_FROM:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def _is_cancelled(flag: CancelFlag | Callable[[], bool] | None) -> bool:
    if flag is None:
        return False
    return flag.is_set() if hasattr(flag, "is_set") else bool(flag())  # type: ignore[operator]


def export_batch(ctx: UserContext, site: str | None, out_dir: str | os.PathLike[str],
                 progress_cb: ProgressCallback | None = None,
                 cancel_flag: CancelFlag | Callable[[], bool] | None = None, *,
                 renderer: PdfRenderer | None = None, page_size: str = "A4",
                 workers: int | None = 1) -> BatchResult:
    """Write the casebook of every subject of `site` (None: every site the user may see).

    `progress_cb(done, total, screening_number)` is called after each file (and once with
    done=0 before the first); `cancel_flag` (a threading.Event or a callable) stops the batch
    between files: the files already written stay, no partial file is left. With workers > 1
    the PDFs are rendered in that many processes while this thread reads the database and
    writes the files; None picks `auto_workers` for the number of subjects."""
    started = time.perf_counter()
    renderer = _renderer(renderer)
    size = check_page_size(page_size)
    ctx.require(Action.EXPORT, site)
    if site is not None and site not in {s.code for s in ctx.study.protocol.sites}:
        raise NotFound(f"site {site!r} is not a site of this study")
    folder = check_folder(out_dir)
    subjects = [r for r in list_subjects(ctx) if site is None or r.site == site]
    result = BatchResult(total=len(subjects))
    report = progress_cb or (lambda done, total, current: None)
    report(0, result.total, "")
    if workers is None:
        workers = auto_workers(len(subjects))

    def save(casebook: Casebook, data: bytes) -> None:
        name = casebook_filename(casebook.study.study_id, casebook.subject.screening_number)
        result.written.append(write_atomically(folder / name, data))
        report(len(result.written), result.total, casebook.subject.screening_number)

    if workers <= 1 or len(subjects) < 2:
        for row in subjects:
            if _is_cancelled(cancel_flag):
                break
            casebook = build_casebook(ctx, row.id)
            data = _rendered(casebook, lambda cb=casebook: renderer.casebook(cb, size))
            if _is_cancelled(cancel_flag):
                break
            save(casebook, data)
    else:
        _parallel(ctx, [r.id for r in subjects], size, renderer, workers, cancel_flag, save)
    result.cancelled = len(result.written) < result.total and _is_cancelled(cancel_flag)
    result.seconds = time.perf_counter() - started
    return result


def _parallel(ctx: UserContext, ids: list[int], size: str, renderer: PdfRenderer,
              workers: int, cancel_flag: CancelFlag | Callable[[], bool] | None,
              save: Callable[[Casebook, bytes], None]) -> None:
    """Render in worker processes, at most 2 per worker in flight; files written in order."""
    # "spawn": forking a process that runs Qt or SQLite threads is not safe.
    context = multiprocessing.get_context("spawn")
    pending: deque[tuple[Casebook, Future[bytes]]] = deque()
    todo = deque(ids)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        try:
            while todo or pending:
                while todo and len(pending) < 2 * workers and not _is_cancelled(cancel_flag):
                    casebook = build_casebook(ctx, todo.popleft())
                    pending.append((casebook, pool.submit(renderer.casebook, casebook, size)))
                if _is_cancelled(cancel_flag) or not pending:
                    break
                casebook, future = pending[0]
                wait([future], timeout=0.1, return_when=FIRST_COMPLETED)
                if not future.done():
                    continue
                pending.popleft()
                if _is_cancelled(cancel_flag):
                    break
                save(casebook, _rendered(casebook, future.result))
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
