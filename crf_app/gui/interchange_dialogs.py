"""File menu: ODM export and import, CSV export — run off the GUI thread with progress and Cancel.

Each action calls one service (crf_app.services.odm_export.export_odm, odm_import.import_odm,
csv_service.export_csv) on a worker thread; the services check the user's role, run in their own
transactions and undo themselves when cancelled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEventLoop, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressDialog,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import CrfError
from crf_app.services.context import UserContext
from crf_app.services.csv_service import export_csv
from crf_app.services.odm_export import export_odm
from crf_app.services.odm_import import ImportReport, import_odm

Work = Callable[[Callable[[int, int], None], Callable[[], bool]], Any]


class _Bridge(QObject):
    """Lives on the GUI thread; the worker thread emits, Qt queues the calls to the GUI."""

    progressed = Signal(int, int)
    finished = Signal(object)
    failed = Signal(object)


class Cancelled(Exception):
    """The user pressed Cancel (the work undid itself)."""


def run_with_progress(parent: QWidget | None, title: str, label: str, work: Work) -> Any:
    """Run `work(progress, cancelled)` on a worker thread behind a modal progress dialog.

    Returns its result; re-raises its exception on the GUI thread; raises Cancelled if the user
    cancelled (the work functions then roll back or delete what they started).
    """
    cancel = threading.Event()
    dialog = QProgressDialog(label, "Cancel", 0, 1000, parent)
    dialog.setWindowTitle(title)
    dialog.setWindowModality(Qt.WindowModality.WindowModal)
    dialog.setMinimumDuration(300)
    dialog.setAutoClose(False)
    dialog.setAutoReset(False)
    bridge = _Bridge()
    outcome: dict[str, Any] = {}
    loop = QEventLoop()

    def progressed(done: int, total: int) -> None:
        if total > 0 and not cancel.is_set():
            dialog.setValue(min(999, int(done * 1000 / total)))

    def finished(result: Any) -> None:
        outcome["result"] = result
        loop.quit()

    def failed(exc: BaseException) -> None:
        outcome["error"] = exc
        loop.quit()

    def cancelled() -> None:
        cancel.set()
        dialog.setLabelText("Cancelling…")

    def run() -> None:
        try:
            result = work(bridge.progressed.emit, cancel.is_set)
        except BaseException as exc:  # handed to the GUI thread
            bridge.failed.emit(exc)
        else:
            bridge.finished.emit(result)

    bridge.progressed.connect(progressed, Qt.ConnectionType.QueuedConnection)
    bridge.finished.connect(finished, Qt.ConnectionType.QueuedConnection)
    bridge.failed.connect(failed, Qt.ConnectionType.QueuedConnection)
    dialog.canceled.connect(cancelled)
    worker = threading.Thread(target=run, name=f"crf-app: {title}", daemon=True)
    worker.start()
    loop.exec()
    worker.join()
    was_cancelled = cancel.is_set()
    dialog.canceled.disconnect(cancelled)
    dialog.close()
    dialog.deleteLater()
    if "error" in outcome:
        if was_cancelled:
            raise Cancelled(str(outcome["error"]))
        raise outcome["error"]
    return outcome.get("result")


class ReportDialog(QDialog):
    """A read-only text report (the import report) the user can copy."""

    def __init__(self, title: str, text: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.resize(820, 520)
        layout = QVBoxLayout(self)
        self.text = QPlainTextEdit(text)
        self.text.setObjectName("importReport")
        self.text.setReadOnly(True)
        layout.addWidget(self.text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)


SCOPES = [("study", "Whole study — transactional (to merge on another laptop)"),
          ("snapshot", "Whole study — snapshot (archive, or a new study elsewhere)"),
          ("site", "One site — snapshot"),
          ("subject", "One subject — snapshot")]


class OdmExportDialog(QDialog):
    """Choose what to export and where."""

    def __init__(self, ctx: UserContext, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.setWindowTitle("Export ODM 1.3.2")
        form = QFormLayout(self)
        self.scope = QComboBox()
        self.scope.setObjectName("odmScope")
        for code, label in SCOPES:
            self.scope.addItem(label, code)
        self.site = QComboBox()
        for s in ctx.study.protocol.sites:
            if ctx.user.site_code in (None, s.code):
                self.site.addItem(f"{s.code} — {s.name}", s.code)
        self.subject = QLineEdit()
        self.subject.setPlaceholderText("Screening number, e.g. S01-001")
        self.path = QLineEdit(str(Path.home() / f"{ctx.study.oid}-odm.xml"))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        form.addRow("Export", self.scope)
        form.addRow("Site", self.site)
        form.addRow("Subject", self.subject)
        form.addRow("File", row)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.scope.currentIndexChanged.connect(self._scope_changed)
        self._scope_changed()

    def _scope_changed(self) -> None:
        scope = self.scope.currentData()
        self.site.setEnabled(scope == "site")
        self.subject.setEnabled(scope == "subject")

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export ODM", self.path.text(),
                                              "ODM XML (*.xml)")
        if path:
            self.path.setText(path)

    def options(self) -> dict[str, Any]:
        scope = self.scope.currentData()
        return {"snapshot": scope == "snapshot",
                "site": self.site.currentData() if scope == "site" else None,
                "subject": self.subject.text().strip() or None if scope == "subject" else None}


def export_odm_interactive(parent: QWidget | None, ctx: UserContext) -> Any:
    """File → Export ODM…: returns the ExportSummary, or None if cancelled or refused."""
    dialog = OdmExportDialog(ctx, parent)
    if not dialog.exec():
        return None
    out, options = Path(dialog.path.text()), dialog.options()

    def work(progress, cancelled):
        return export_odm(ctx, out, progress=progress, cancelled=cancelled, **options)
    try:
        summary = run_with_progress(parent, "Export ODM", f"Writing {out.name}…", work)
    except Cancelled:
        return None
    except CrfError as exc:
        QMessageBox.warning(parent, "Export ODM", str(exc))
        return None
    QMessageBox.information(
        parent, "Export ODM",
        f"{summary.subjects} subjects written to {out}\n{summary.file_type} file "
        f"{summary.file_oid}" + (f", follows {summary.prior_file_oid}"
                                 if summary.prior_file_oid else "")
        + ("\n\n" + "\n".join(summary.warnings) if summary.warnings else ""))
    return summary


def import_odm_interactive(parent: QWidget | None, ctx: UserContext,
                           path: Path | None = None) -> ImportReport | None:
    """File → Import ODM…: merge another laptop's file; shows the import report."""
    if path is None:
        name, _ = QFileDialog.getOpenFileName(parent, "Import ODM", str(Path.home()),
                                              "ODM XML (*.xml);;All files (*)")
        if not name:
            return None
        path = Path(name)
    try:
        report = run_with_progress(parent, "Import ODM", f"Merging {path.name}…",
                                   lambda progress, cancelled: import_odm(
                                       ctx, path, progress=progress, cancelled=cancelled))
    except Cancelled:
        QMessageBox.information(parent, "Import ODM", "Import cancelled; nothing was imported.")
        return None
    except CrfError as exc:
        ReportDialog("Import refused", str(exc), parent).exec()
        return None
    ReportDialog("Import report", report.text(), parent).exec()
    return report


def export_csv_interactive(parent: QWidget | None, ctx: UserContext) -> Any:
    """File → Export CSV…: one file per form and the data dictionary, in a chosen folder."""
    folder = QFileDialog.getExistingDirectory(parent, "Export CSV into folder",
                                              str(Path.home()))
    if not folder:
        return None
    try:
        summary = run_with_progress(parent, "Export CSV", "Writing CSV files…",
                                    lambda progress, cancelled: export_csv(
                                        ctx, Path(folder), progress=progress,
                                        cancelled=cancelled))
    except Cancelled:
        return None
    except CrfError as exc:
        QMessageBox.warning(parent, "Export CSV", str(exc))
        return None
    QMessageBox.information(parent, "Export CSV",
                            f"{summary.subjects} subjects, {len(summary.files)} files written "
                            f"to {folder}")
    return summary
