"""The "Export PDF" dialog: a subject's casebook, a site's or every subject's casebooks, or the
blank CRF book, written off the GUI thread with a progress dialog and Cancel.

Hook it to a menu with `export_pdf_action(window, ctx, window.current_subject_id)`. The PDF
renderer is the one installed with `crf_app.services.pdf_export.use_renderer` (the GUI may not
import the exports), unless one is passed in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressDialog,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import CrfError
from crf_app.domain.roles import Action, allowed
from crf_app.services import pdf_export
from crf_app.services.context import UserContext
from crf_app.services.pdf_export import BatchResult, PdfRenderer
from crf_app.services.subjects import subject_detail

log = logging.getLogger(__name__)
Job = Callable[[Callable[[int, int, str], None], threading.Event], BatchResult]


class ExportWorker(QObject):
    """Runs one export job in a worker thread; reports progress, the result or the error."""

    progress = Signal(int, int, str)
    finished = Signal(object)  # BatchResult
    failed = Signal(str)

    def __init__(self, job: Job):
        super().__init__()
        self.job = job
        self.cancel = threading.Event()

    @Slot()
    def run(self) -> None:
        try:
            result = self.job(self.progress.emit, self.cancel)
        except CrfError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # a bug: shown to the user and logged with its traceback
            log.exception("PDF export failed")
            self.failed.emit(f"Unexpected error: {type(exc).__name__}: {exc}")
        else:
            self.finished.emit(result)


class ExportDialog(QDialog):
    """Choose what to export, where, and the page size; then export with progress."""

    completed = Signal(object)  # BatchResult, once an export ends (also when cancelled)

    SUBJECT, SITE, ALL, BLANK, ANNOTATED = range(5)

    def __init__(self, ctx: UserContext, parent: QWidget | None = None, *,
                 subject_id: int | None = None, out_dir: str | Path | None = None,
                 renderer: PdfRenderer | None = None, workers: int | None = None):
        super().__init__(parent)
        self.ctx, self.subject_id, self.renderer, self.workers = ctx, subject_id, renderer, workers
        self.thread: QThread | None = None
        self.worker: ExportWorker | None = None
        self.progress: QProgressDialog | None = None
        self.last_result: BatchResult | None = None
        self.last_error = ""
        self.setWindowTitle("Export PDF")
        self.setMinimumWidth(520)
        layout = QVBoxLayout(self)
        can_export = allowed(ctx.user.role, Action.EXPORT)
        self.scope = QButtonGroup(self)
        subject_label = "This subject's casebook"
        if subject_id is not None and can_export:
            subject_label += f" ({subject_detail(ctx, subject_id).screening_number})"
        options = [(self.SUBJECT, subject_label, can_export and subject_id is not None),
                   (self.SITE, "Casebooks of every subject at site", can_export),
                   (self.ALL, "Casebooks of every subject", can_export),
                   (self.BLANK, "Blank CRF book (paper back-up)", True),
                   (self.ANNOTATED, "Annotated CRF (variable names)", True)]
        site_row = QHBoxLayout()
        for key, label, enabled in options:
            button = QRadioButton(label)
            button.setObjectName(f"scope{key}")
            button.setEnabled(enabled)
            self.scope.addButton(button, key)
            if key == self.SITE:
                self.site = QComboBox()
                self.site.setObjectName("site")
                for site in ctx.study.protocol.sites:
                    if ctx.user.site_code in (None, site.code):
                        self.site.addItem(f"{site.code} — {site.name}", site.code)
                site_row.addWidget(button)
                site_row.addWidget(self.site, 1)
                layout.addLayout(site_row)
            else:
                layout.addWidget(button)
        first = next(k for k, _, enabled in options if enabled)
        self.scope.button(first).setChecked(True)
        form = QFormLayout()
        self.folder = QLineEdit(str(out_dir or Path.home()))
        self.folder.setObjectName("folder")
        browse = QPushButton("&Browse…")
        browse.clicked.connect(self.browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        folder_label = QLabel("&Folder")
        folder_label.setBuddy(self.folder)  # the field is a layout: name the mnemonic's target
        form.addRow(folder_label, row)
        self.page_size = QComboBox()
        self.page_size.setObjectName("pageSize")
        self.page_size.addItems(list(pdf_export.PAGE_SIZES))
        form.addRow("&Page size", self.page_size)
        layout.addLayout(form)
        self.status = QLabel("")
        self.status.setObjectName("exportStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.export_button = buttons.addButton("&Export",
                                               QDialogButtonBox.ButtonRole.ActionRole)
        self.export_button.setObjectName("exportButton")
        self.export_button.setDefault(True)
        self.export_button.clicked.connect(self.start)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    # --- behaviour --------------------------------------------------------------------------
    def browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export PDFs to", self.folder.text())
        if path:
            self.folder.setText(path)

    def job(self) -> tuple[Job, str]:
        """The export chosen in the dialog, and what the progress dialog says meanwhile."""
        ctx, out, size, renderer = (self.ctx, self.folder.text().strip(),
                                    self.page_size.currentText(), self.renderer)
        choice = self.scope.checkedId()

        def single(write: Callable[[], Path]) -> Job:
            def run(progress, cancel) -> BatchResult:
                progress(0, 1, "")
                path = write()
                progress(1, 1, path.name)
                return BatchResult(total=1, written=[path])
            return run

        if choice == self.SUBJECT:
            sid = self.subject_id
            return single(lambda: pdf_export.export_subject_pdf(
                ctx, sid, out, size, renderer=renderer)), "Writing the casebook…"
        if choice in (self.BLANK, self.ANNOTATED):
            annotated = choice == self.ANNOTATED
            return single(lambda: pdf_export.export_blank_book(
                ctx, out, annotated, size, renderer=renderer)), "Writing the CRF book…"
        site = self.site.currentData() if choice == self.SITE else None
        return (lambda progress, cancel: pdf_export.export_batch(
            ctx, site, out, progress, cancel, renderer=renderer, page_size=size,
            workers=self.workers)), "Writing casebooks…"

    def start(self) -> None:
        """Start the chosen export in a worker thread, with a progress dialog and Cancel."""
        if self.thread is not None:
            return
        if not self.folder.text().strip():
            self.show_error("Choose the folder to export to.")
            return
        job, text = self.job()
        self.last_result, self.last_error = None, ""
        self.status.setText(text)
        self.export_button.setEnabled(False)
        self.progress = QProgressDialog(text, "Cancel", 0, 0, self)
        self.progress.setObjectName("exportProgress")
        self.progress.setWindowTitle("Export PDF")
        self.progress.setWindowModality(Qt.WindowModality.WindowModal)
        self.progress.setMinimumDuration(0)
        self.progress.setAutoClose(False)
        self.progress.setAutoReset(False)
        self.thread = QThread(self)
        self.worker = ExportWorker(job)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.progress.connect(self.on_progress)
        self.worker.finished.connect(self.on_finished)
        self.worker.failed.connect(self.on_failed)
        self.progress.canceled.connect(self.cancel)
        self.thread.start()
        self.progress.show()

    def cancel(self) -> None:
        """Stop after the file being written (no partial file is left)."""
        if self.worker is not None:
            self.worker.cancel.set()
            self.status.setText("Cancelling after the current file…")

    @Slot(int, int, str)
    def on_progress(self, done: int, total: int, current: str) -> None:
        progress = self.progress
        if progress is None:
            return
        if current and not (self.worker and self.worker.cancel.is_set()):
            progress.setLabelText(f"Written {done} of {total}: {current}")
        progress.setMaximum(max(total, 1))
        # last: a window-modal progress dialog processes events in setValue, so the export
        # may finish (and this dialog be torn down) inside this call
        progress.setValue(done)

    def _stop_thread(self) -> None:
        if self.progress is not None:
            self.progress.canceled.disconnect(self.cancel)
            self.progress.close()
            self.progress.deleteLater()
            self.progress = None
        if self.thread is not None:
            self.thread.quit()
            self.thread.wait()
            self.thread.deleteLater()
            self.thread = None
        if self.worker is not None:
            self.worker.deleteLater()
            self.worker = None
        self.export_button.setEnabled(True)

    @Slot(object)
    def on_finished(self, result: BatchResult) -> None:
        self._stop_thread()
        self.last_result = result
        folder = result.written[0].parent if result.written else Path(self.folder.text())
        if result.cancelled:
            text = (f"Cancelled: {len(result.written)} of {result.total} PDF files were written "
                    f"to {folder}; each of them is complete.")
        elif result.total == 0:
            text = "There is no subject to export."
        else:
            noun = "PDF file was" if len(result.written) == 1 else "PDF files were"
            text = f"Done: {len(result.written)} {noun} written to {folder}."
        self.status.setText(text)
        self.completed.emit(result)

    @Slot(str)
    def on_failed(self, message: str) -> None:
        self._stop_thread()
        self.show_error(message)
        self.completed.emit(None)

    def show_error(self, message: str) -> None:
        self.last_error = message
        self.status.setText(f"Export failed: {message}")
        QMessageBox.critical(self, "Export failed", message)

    def reject(self) -> None:
        if self.thread is not None:  # closing while exporting: cancel first, then close
            self.cancel()
            return
        super().reject()


def open_export_dialog(parent: QWidget | None, ctx: UserContext,
                       subject_id: int | None = None) -> ExportDialog:
    """Show the export dialog (non-blocking) for `ctx`, with the selected subject if any."""
    dialog = ExportDialog(ctx, parent, subject_id=subject_id)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.show()
    return dialog


def export_pdf_action(parent: QWidget, ctx: UserContext,
                      current_subject: Callable[[], int | None] = lambda: None) -> QAction:
    """A 'Export PDF…' action for the File menu; opens the dialog for the selected subject."""
    action = QAction("Export &PDF…", parent)
    action.setObjectName("exportPdfAction")
    action.triggered.connect(lambda: open_export_dialog(parent, ctx, current_subject()))
    return action
