"""The subject's dosing log: compliance, the course timeline, the records, quick entry."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.roles import Action, allowed
from crf_app.gui.course_timeline import CourseTimeline
from crf_app.gui.dose_dialogs import DoseDialog, UsualDayDialog
from crf_app.gui.log_form import NOTE_STYLE
from crf_app.gui.log_table_models import DoseTableModel
from crf_app.services import dosing as svc
from crf_app.services.context import UserContext
from crf_app.services.reports import subject_timeline


def outcome_message(outcomes: list[svc.DoseOutcome]) -> str:
    """What the user should know after a save: queries raised, warnings."""
    n = len(outcomes)
    text = f"Saved {n} administration{'s' if n != 1 else ''}."
    opened = [m for o in outcomes for m in o.queries_opened]
    closed = [m for o in outcomes for m in o.queries_closed]
    warnings = list(dict.fromkeys(w.message for o in outcomes for w in o.warnings))
    if opened:
        text += f" {len(opened)} query(ies) raised: " + "; ".join(opened)
    if closed:
        text += f" {len(closed)} query(ies) closed."
    if warnings:
        text += " Warning: " + "; ".join(warnings)
    return text


class DosingTab(QWidget):
    """Dosing of one subject; emits `changed(subject_id)` after every save."""

    changed = Signal(int)

    def __init__(self, ctx: UserContext, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id: int | None = None
        self.randomised = False
        self._message_for: int | None = None
        self.run_dialog: Callable[[QDialog], int] = lambda dlg: dlg.exec()
        layout = QVBoxLayout(self)
        self.compliance = QLabel()
        self.compliance.setObjectName("complianceLabel")
        self.compliance.setWordWrap(True)
        layout.addWidget(self.compliance)
        self.timeline = CourseTimeline()
        # In a scroll area inside a splitter: on a small screen the user gives the table room.
        self.timeline_area = QScrollArea()
        self.timeline_area.setWidgetResizable(True)
        self.timeline_area.setFrameShape(QFrame.Shape.NoFrame)
        self.timeline_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.timeline_area.setWidget(self.timeline)
        self.split = QSplitter(Qt.Orientation.Vertical)
        self.split.setChildrenCollapsible(False)
        self.split.addWidget(self.timeline_area)
        self.model = DoseTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("doseTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setWordWrap(False)
        self.table.doubleClicked.connect(lambda _i: self.edit_dose())
        self.split.addWidget(self.table)
        self.split.setStretchFactor(1, 1)
        layout.addWidget(self.split, 1)
        self.message = QLabel()
        self.message.setObjectName("doseMessage")
        self.message.setStyleSheet(NOTE_STYLE)
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        buttons = QHBoxLayout()
        self.usual_button = QPushButton("&Usual day…")
        self.usual_button.setToolTip("Record the day's usual administrations at once")
        self.add_button = QPushButton("&Add administration or missed dose…")
        self.edit_button = QPushButton("Co&rrect…")
        for b in (self.usual_button, self.add_button, self.edit_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.usual_button.clicked.connect(self.usual_day)
        self.add_button.clicked.connect(self.add_dose)
        self.edit_button.clicked.connect(self.edit_dose)
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)
        self._update_buttons()

    def show_subject(self, subject_id: int | None) -> None:
        # The note about the last save stays with its subject: the main window re-selects
        # the subject (passing through None) when it refreshes after a save.
        if subject_id is not None and subject_id != self._message_for:
            self.message.clear()
            self._message_for = None
        self.message.setVisible(subject_id is not None and bool(self.message.text()))
        self.subject_id = subject_id
        self.refresh()

    def refresh(self) -> None:
        sid = self.subject_id
        if sid is None:
            self.model.set_rows([])
            self.timeline.set_timeline(None)
            self.timeline_area.hide()
            self.compliance.setText("")
            self.randomised = False
            self._update_buttons()
            return
        self.model.set_rows(svc.list_doses(self.ctx, sid))
        timeline = subject_timeline(self.ctx, sid)
        self.timeline.set_timeline(timeline)
        self.timeline_area.setVisible(bool(timeline.days or timeline.aes))
        room = self.split.height() if self.split.height() > 200 else 600
        top = min(self.timeline.needed_height() + 6, int(room * 0.62))
        self.split.setSizes([top, max(room - top, 120)])
        self.randomised = self.timeline.timeline is not None and \
            self.timeline.timeline.baseline is not None
        comp = svc.subject_compliance(self.ctx, sid)
        self.compliance.setText(f"<b>{comp.label}</b>" if self.randomised else
                                "<b>Not randomised yet</b> — study drug is recorded from "
                                "the baseline (day 1) on.")
        self.table.scrollToBottom()
        self._update_buttons()

    def selected(self) -> svc.DoseRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.row(rows[0].row()) if rows else None

    def _update_buttons(self, *_args) -> None:
        can = (self.subject_id is not None and self.randomised
               and allowed(self.ctx.user.role, Action.EDIT_DATA))
        self.usual_button.setEnabled(can)
        self.add_button.setEnabled(can)
        self.edit_button.setEnabled(can and self.selected() is not None)

    def usual_day(self) -> None:
        if self.subject_id is None or not self.usual_button.isEnabled():
            return
        dlg = UsualDayDialog(self.ctx, self.subject_id, parent=self)
        if self.run_dialog(dlg):
            self._after_change(dlg.outcomes)

    def add_dose(self) -> None:
        if self.subject_id is None or not self.add_button.isEnabled():
            return
        dlg = DoseDialog(self.ctx, self.subject_id, parent=self)
        if self.run_dialog(dlg) and dlg.outcome is not None:
            self._after_change([dlg.outcome])

    def edit_dose(self) -> None:
        row = self.selected()
        if row is None or self.subject_id is None or not self.edit_button.isEnabled():
            return
        dlg = DoseDialog(self.ctx, self.subject_id, row, parent=self)
        if self.run_dialog(dlg) and dlg.outcome is not None:
            self._after_change([dlg.outcome])

    def _after_change(self, outcomes: list[svc.DoseOutcome]) -> None:
        self.refresh()
        self.message.setText(outcome_message(outcomes))
        self.message.show()
        self._message_for = self.subject_id
        if self.subject_id is not None:
            self.changed.emit(self.subject_id)
