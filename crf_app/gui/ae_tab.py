"""The subject's adverse-event log: the table, the SAE banner, add / correct / SAE reported."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.roles import Action, allowed
from crf_app.gui.ae_dialog import AeDialog, SaeReportDialog
from crf_app.gui.log_form import NOTE_STYLE
from crf_app.gui.log_table_models import AeTableModel
from crf_app.gui.sae_banner import SaeBanner
from crf_app.services.adverse_events import AeRow, list_adverse_events
from crf_app.services.context import UserContext


class AeTab(QWidget):
    """Adverse events of one subject; emits `changed(subject_id)` after every save."""

    changed = Signal(int)

    def __init__(self, ctx: UserContext, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id: int | None = None
        # How dialogs are run (tests replace it to drive the dialog without a modal loop).
        self.run_dialog: Callable[[QDialog], int] = lambda dlg: dlg.exec()
        layout = QVBoxLayout(self)
        self.banner = SaeBanner(ctx, follow_subject=True)
        layout.addWidget(self.banner)
        self.model = AeTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("aeTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setWordWrap(False)
        self.table.doubleClicked.connect(lambda _i: self.edit_event())
        layout.addWidget(self.table, 1)
        self.flags = QLabel()
        self.flags.setObjectName("aeFlags")
        self.flags.setStyleSheet(NOTE_STYLE)
        self.flags.setWordWrap(True)
        layout.addWidget(self.flags)
        buttons = QHBoxLayout()
        self.add_button = QPushButton("&Add adverse event…")
        self.edit_button = QPushButton("Co&rrect / assess…")
        self.report_button = QPushButton("SAE re&port sent…")
        for b in (self.add_button, self.edit_button, self.report_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.add_button.clicked.connect(self.add_event)
        self.edit_button.clicked.connect(self.edit_event)
        self.report_button.clicked.connect(self.report_sae)
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)
        self._update_buttons()

    def show_subject(self, subject_id: int | None) -> None:
        self.subject_id = subject_id
        self.refresh()

    def refresh(self) -> None:
        rows = list_adverse_events(self.ctx, self.subject_id) if self.subject_id else []
        self.model.set_rows(rows)
        self.banner.set_subject(self.subject_id)
        flagged = [f"AE{r.sequence} {r.term_label}: {'; '.join(r.flag_text)}"
                   for r in rows if r.flag_text]
        self.flags.setText("Flagged for review — " + " · ".join(flagged) if flagged else "")
        self.flags.setVisible(bool(flagged))
        self._update_buttons()

    def selected(self) -> AeRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.row(rows[0].row()) if rows else None

    def _update_buttons(self, *_args) -> None:
        can_edit = self.subject_id is not None and allowed(self.ctx.user.role, Action.EDIT_DATA)
        row = self.selected()
        self.add_button.setEnabled(can_edit)
        self.edit_button.setEnabled(can_edit and row is not None)
        self.report_button.setEnabled(can_edit and row is not None and row.serious)

    def add_event(self) -> None:
        if self.subject_id is None or not self.add_button.isEnabled():
            return
        dlg = AeDialog(self.ctx, self.subject_id, parent=self)
        if self.run_dialog(dlg):
            self._after_change(dlg.saved_id)

    def edit_event(self) -> None:
        row = self.selected()
        if row is None or self.subject_id is None or not self.edit_button.isEnabled():
            return
        dlg = AeDialog(self.ctx, self.subject_id, row, parent=self)
        if self.run_dialog(dlg):
            self._after_change(row.id)

    def report_sae(self) -> None:
        row = self.selected()
        if row is None or not row.serious:
            return
        if self.run_dialog(SaeReportDialog(self.ctx, row, parent=self)):
            self._after_change(row.id)

    def _after_change(self, ae_id: int | None) -> None:
        self.refresh()
        for i, r in enumerate(self.model.rows()):
            if r.id == ae_id:
                self.table.selectRow(i)
        if self.subject_id is not None:
            self.changed.emit(self.subject_id)
