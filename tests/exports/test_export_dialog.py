"""The Export PDF dialog: a batch off the GUI thread, progress, cancel, errors shown."""

import threading

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QPushButton, QWidget

from crf_app.domain.roles import Role
from crf_app.exports.pdf import RENDERER
from crf_app.gui.export_dialog import ExportDialog, export_pdf_action


@pytest.fixture
def shown_errors(monkeypatch):
    errors: list[str] = []

    def critical(parent, title, text, *a, **k):
        errors.append(text)
        return QMessageBox.StandardButton.Ok

    monkeypatch.setattr(QMessageBox, "critical", staticmethod(critical))
    return errors


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "pdf"
    folder.mkdir()
    return folder


def make_dialog(qtbot, ctx, out, **kwargs) -> ExportDialog:
    dialog = ExportDialog(ctx, out_dir=out, **kwargs)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def test_batch_runs_off_the_gui_thread_and_reports_completion(qtbot, subjects, monitor, out,
                                                              shown_errors):
    gui_thread = threading.get_ident()
    seen_threads = set()

    class Spy:
        def casebook(self, casebook, page_size="A4"):
            seen_threads.add(threading.get_ident())
            return RENDERER.casebook(casebook, page_size)

    dialog = make_dialog(qtbot, monitor, out, renderer=Spy(), workers=1)
    dialog.scope.button(ExportDialog.ALL).setChecked(True)
    with qtbot.waitSignal(dialog.completed, timeout=60_000) as done:
        qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
        assert dialog.progress is not None and dialog.progress.isVisible()
        assert not dialog.export_button.isEnabled()
    result = done.args[0]
    assert len(result.written) == 3 and not result.cancelled
    assert dialog.status.text().startswith("Done: 3 PDF files were written to")
    assert len(list(out.glob("*.pdf"))) == 3
    assert seen_threads and gui_thread not in seen_threads
    assert dialog.progress is None and dialog.export_button.isEnabled()
    assert shown_errors == []


def test_cancel_stops_the_batch_and_leaves_only_whole_files(qtbot, subjects, monitor, out,
                                                           shown_errors):
    rendering, release = threading.Event(), threading.Event()

    class Slow:
        def casebook(self, casebook, page_size="A4"):
            rendering.set()
            assert release.wait(30)
            return RENDERER.casebook(casebook, page_size)

    dialog = make_dialog(qtbot, monitor, out, renderer=Slow(), workers=1)
    dialog.scope.button(ExportDialog.ALL).setChecked(True)
    with qtbot.waitSignal(dialog.completed, timeout=60_000) as done:
        dialog.start()
        qtbot.waitUntil(rendering.is_set, timeout=30_000)
        qtbot.mouseClick(dialog.progress.findChild(QPushButton), Qt.MouseButton.LeftButton)
        assert dialog.worker.cancel.is_set() and "Cancelling" in dialog.status.text()
        release.set()
    result = done.args[0]
    assert result.cancelled and result.written == []
    assert list(out.iterdir()) == []
    assert dialog.status.text().startswith("Cancelled: 0 of 3 PDF files were written")
    assert shown_errors == []


def test_errors_are_shown_not_swallowed(qtbot, subjects, monitor, tmp_path, shown_errors):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    dialog = make_dialog(qtbot, monitor, a_file, workers=1)
    dialog.scope.button(ExportDialog.SITE).setChecked(True)
    with qtbot.waitSignal(dialog.completed, timeout=60_000):
        dialog.start()
    assert len(shown_errors) == 1 and "it is a file, not a folder" in shown_errors[0]
    assert dialog.status.text().startswith("Export failed:")

    class Broken:
        def casebook(self, casebook, page_size="A4"):
            raise ZeroDivisionError("bug in a renderer")

    dialog = make_dialog(qtbot, monitor, tmp_path / "pdf", renderer=Broken(),
                         subject_id=subjects.rich)
    assert dialog.scope.checkedId() == ExportDialog.SUBJECT
    assert "S01-001" in dialog.scope.button(ExportDialog.SUBJECT).text()
    with qtbot.waitSignal(dialog.completed, timeout=60_000):
        dialog.start()
    assert "subject S01-001 could not be rendered: ZeroDivisionError" in shown_errors[1]


def test_site_staff_may_print_only_the_blank_book(qtbot, study, as_role, out, shown_errors):
    coordinator = as_role(Role.COORDINATOR)
    dialog = make_dialog(qtbot, coordinator, out)
    for key in (ExportDialog.SUBJECT, ExportDialog.SITE, ExportDialog.ALL):
        assert not dialog.scope.button(key).isEnabled()
    assert dialog.scope.checkedId() == ExportDialog.BLANK
    dialog.page_size.setCurrentText("Letter")
    with qtbot.waitSignal(dialog.completed, timeout=60_000) as done:
        dialog.start()
    assert [p.name for p in done.args[0].written] == ["NASEMAX-PSR-01_blank_crf_book.pdf"]
    assert "Done: 1 PDF file was written" in dialog.status.text()


def test_menu_action_opens_the_dialog_for_the_selected_subject(qtbot, subjects, monitor):
    window = QWidget()
    qtbot.addWidget(window)
    action = export_pdf_action(window, monitor, lambda: subjects.plain)
    action.trigger()
    dialog = window.findChild(ExportDialog)
    assert dialog is not None and dialog.isVisible()
    assert "S01-002" in dialog.scope.button(ExportDialog.SUBJECT).text()
    dialog.close()
