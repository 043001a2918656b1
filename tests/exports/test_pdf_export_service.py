"""Writing PDF files: one subject, batches with progress and cancel, the blank book, errors."""

import errno
import os
import threading

import pytest

from crf_app.domain.errors import NotFound, PermissionDenied
from crf_app.domain.roles import Role
from crf_app.exports.pdf import RENDERER
from crf_app.services import pdf_export
from crf_app.services.pdf_export import ExportError
from tests.conftest import fixed_clock
from tests.exports.conftest import read_pdf

NAMES = {"NASEMAX-PSR-01_S01-001_casebook.pdf", "NASEMAX-PSR-01_S01-002_casebook.pdf",
         "NASEMAX-PSR-01_S02-003_casebook.pdf"}


@pytest.fixture
def out(tmp_path):
    """The export folder (the study database lives in tmp_path itself)."""
    folder = tmp_path / "pdf"
    folder.mkdir()
    return folder


def files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def assert_whole_pdfs(folder) -> None:
    for path in folder.iterdir():
        assert not path.name.endswith(".part"), path
        data = path.read_bytes()
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        assert len(read_pdf(data).pages) >= 3


class Renderer:
    """The real renderer, with a hook called before each casebook is rendered."""

    def __init__(self, before=lambda casebook: None):
        self.before = before
        self.rendered: list[str] = []

    def casebook(self, casebook, page_size="A4"):
        self.before(casebook)
        self.rendered.append(casebook.subject.screening_number)
        return RENDERER.casebook(casebook, page_size)

    def blank_book(self, book, annotated=False, page_size="A4"):
        return RENDERER.blank_book(book, annotated, page_size)


def test_export_subject_pdf_writes_one_whole_file(out, subjects, monitor):
    path = pdf_export.export_subject_pdf(monitor, subjects.rich, out / "new" / "dir",
                                         "Letter", renderer=RENDERER)
    assert path.name == "NASEMAX-PSR-01_S01-001_casebook.pdf"
    assert files(path.parent) == {path.name}
    assert_whole_pdfs(path.parent)
    assert round(float(read_pdf(path.read_bytes()).reader.pages[0].mediabox.width)) == 612


def test_unknown_subject_is_a_clear_error_and_writes_nothing(out, subjects, monitor):
    with pytest.raises(NotFound, match="subject 9999 does not exist"):
        pdf_export.export_subject_pdf(monitor, 9999, out, renderer=RENDERER)
    assert files(out) == set()


def test_subject_is_found_by_screening_number_or_id(subjects, monitor):
    assert pdf_export.subject_id_for(monitor, "s01-002") == subjects.plain
    assert pdf_export.subject_id_for(monitor, str(subjects.rich)) == subjects.rich
    with pytest.raises(NotFound, match="subject 'S09-999' does not exist"):
        pdf_export.subject_id_for(monitor, "S09-999")


def test_unwritable_folders_are_clear_errors_and_leave_no_file(out, subjects, monitor):
    a_file = out / "file.pdf"
    a_file.write_text("x")
    with pytest.raises(ExportError, match="it is a file, not a folder"):
        pdf_export.export_subject_pdf(monitor, subjects.rich, a_file, renderer=RENDERER)
    with pytest.raises(ExportError, match=r"cannot create the folder .*file\.pdf/sub"):
        pdf_export.export_subject_pdf(monitor, subjects.rich, a_file / "sub", renderer=RENDERER)
    assert files(out) == {"file.pdf"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_folder_is_refused(out, subjects, monitor):
    folder = out / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="not writable"):
            pdf_export.export_subject_pdf(monitor, subjects.rich, folder, renderer=RENDERER)
        assert files(folder) == set()
    finally:
        folder.chmod(0o700)


def test_folder_without_write_permission_is_refused(out, subjects, monitor, monkeypatch):
    monkeypatch.setattr(pdf_export.os, "access", lambda path, mode: False)  # as if not root
    with pytest.raises(ExportError, match=r"the folder .*pdf is not writable \(permission"):
        pdf_export.export_batch(monitor, None, out, renderer=RENDERER)
    assert files(out) == set()


def test_a_failing_disk_leaves_neither_the_pdf_nor_a_temporary_file(
        out, subjects, monitor, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pdf_export.os, "fsync", full)
    with pytest.raises(ExportError, match="No space left on device"):
        pdf_export.export_subject_pdf(monitor, subjects.rich, out, renderer=RENDERER)
    assert files(out) == set()


def test_bad_page_size_and_missing_right_are_refused(out, subjects, monitor, as_role):
    with pytest.raises(ExportError, match="use A4 or Letter"):
        pdf_export.export_subject_pdf(monitor, subjects.rich, out, "A5", renderer=RENDERER)
    coordinator = as_role(Role.COORDINATOR)
    with pytest.raises(PermissionDenied, match="export data"):
        pdf_export.export_subject_pdf(coordinator, subjects.rich, out, renderer=RENDERER)
    with pytest.raises(PermissionDenied):
        pdf_export.export_batch(coordinator, None, out, renderer=RENDERER)
    assert files(out) == set()


def test_without_an_installed_renderer_the_reportlab_one_is_used(out, subjects, monitor):
    pdf_export.use_renderer(None)
    path = pdf_export.export_subject_pdf(monitor, subjects.rich, out)
    assert path.exists() and path.read_bytes().startswith(b"%PDF")
    assert pdf_export.export_subject_pdf(monitor, subjects.rich, out, renderer=RENDERER).exists()


def test_render_failure_names_the_subject_and_leaves_no_file(out, subjects, monitor):
    def boom(casebook):
        raise RuntimeError("layout exploded")

    with pytest.raises(ExportError, match=r"subject S01-001 could not be rendered.*layout"):
        pdf_export.export_subject_pdf(monitor, subjects.rich, out,
                                      renderer=Renderer(boom))
    assert files(out) == set()


def test_batch_of_every_subject_and_of_one_site_reports_progress(out, subjects, monitor):
    calls = []
    result = pdf_export.export_batch(monitor, None, out / "all",
                                     lambda *a: calls.append(a), renderer=RENDERER)
    assert (result.total, result.cancelled) == (3, False)
    assert {p.name for p in result.written} == NAMES == files(out / "all")
    assert calls == [(0, 3, ""), (1, 3, "S01-001"), (2, 3, "S01-002"), (3, 3, "S02-003")]
    assert_whole_pdfs(out / "all")
    site = pdf_export.export_batch(monitor, "S02", out / "s02", renderer=RENDERER)
    assert [p.name for p in site.written] == ["NASEMAX-PSR-01_S02-003_casebook.pdf"]
    with pytest.raises(NotFound, match="site 'S09'"):
        pdf_export.export_batch(monitor, "S09", out / "s09", renderer=RENDERER)


def test_cancelled_batch_keeps_whole_files_and_no_partial_one(out, subjects, monitor):
    cancel = threading.Event()

    def progress(done, total, current):
        if done == 1:
            cancel.set()

    result = pdf_export.export_batch(monitor, None, out, progress, cancel,
                                     renderer=RENDERER)
    assert result.cancelled and [p.name for p in result.written] == [
        "NASEMAX-PSR-01_S01-001_casebook.pdf"]
    assert files(out) == {"NASEMAX-PSR-01_S01-001_casebook.pdf"}
    assert_whole_pdfs(out)


def test_cancel_while_a_casebook_renders_does_not_write_it(out, subjects, monitor):
    cancel = threading.Event()
    renderer = Renderer(lambda casebook: cancel.set())
    result = pdf_export.export_batch(monitor, None, out, cancel_flag=cancel.is_set,
                                     renderer=renderer)
    assert renderer.rendered == ["S01-001"]
    assert result.cancelled and result.written == [] and files(out) == set()


def test_batch_in_two_worker_processes_writes_the_same_files(out, subjects, monitor):
    one = pdf_export.export_batch(monitor, None, out / "one", renderer=RENDERER)
    two = pdf_export.export_batch(monitor, None, out / "two", renderer=RENDERER,
                                  workers=2)
    assert [p.name for p in two.written] == [p.name for p in one.written]
    for a, b in zip(one.written, two.written, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_batch_of_a_site_bound_user_covers_their_site_only(out, subjects, as_role,
                                                           study):
    from crf_app.services.context import UserContext

    mon = as_role(Role.MONITOR)
    user = mon.user
    bound = UserContext(study, type(user)(user.id, user.username, user.full_name, user.role,
                                          "S02"), fixed_clock())
    result = pdf_export.export_batch(bound, None, out, renderer=RENDERER)
    assert [p.name for p in result.written] == ["NASEMAX-PSR-01_S02-003_casebook.pdf"]
    with pytest.raises(PermissionDenied):
        pdf_export.export_batch(bound, "S01", out, renderer=RENDERER)


def test_blank_book_export(out, study, as_role):
    coordinator = as_role(Role.COORDINATOR)  # site staff may print the paper back-up
    blank = pdf_export.export_blank_book(coordinator, out, renderer=RENDERER)
    annotated = pdf_export.export_blank_book(coordinator, out, annotated=True,
                                             page_size="letter", renderer=RENDERER)
    assert (blank.name, annotated.name) == ("NASEMAX-PSR-01_blank_crf_book.pdf",
                                            "NASEMAX-PSR-01_annotated_crf.pdf")
    assert "Blank CRF book" in read_pdf(blank.read_bytes()).pages[0]
    assert pdf_export.blank_book(coordinator, True, renderer=RENDERER).startswith(b"%PDF-")
