"""One subject: identity, status and the visit timeline, with the actions on them."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.roles import Action, allowed
from crf_app.domain.subjects import SEXES, SubjectStatus
from crf_app.gui.ae_tab import AeTab
from crf_app.gui.dosing_tab import DosingTab
from crf_app.gui.form_dialog import FormDialog
from crf_app.gui.form_matrix import CellRole, FormMatrixModel
from crf_app.gui.resources import icon
from crf_app.gui.subject_dialogs import DateReasonDialog
from crf_app.gui.subject_model import VisitTableModel
from crf_app.services import subjects as svc
from crf_app.services.context import UserContext
from crf_app.services.forms import FormMatrix, form_matrix


class SubjectView(QWidget):
    """Shows one subject; emits `changed` after any successful action so lists refresh."""

    changed = Signal(int)

    def __init__(self, ctx: UserContext, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.detail: svc.SubjectDetail | None = None
        layout = QVBoxLayout(self)
        self.title = QLabel("Select a subject")
        self.title.setObjectName("StudyHeader")
        layout.addWidget(self.title)
        grid = QGridLayout()
        self.facts: dict[str, QLabel] = {}
        for i, key in enumerate(["Site", "Arm", "Sex / born", "Consent", "Enrolled", "Baseline",
                                 "Status", "Reason"]):
            grid.addWidget(QLabel(f"<b>{key}</b>"), i // 4 * 2, i % 4)
            value = QLabel("—")
            value.setWordWrap(True)
            self.facts[key] = value
            grid.addWidget(value, i // 4 * 2 + 1, i % 4)
        layout.addLayout(grid)

        self.visits = VisitTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("visitTable")
        self.table.setModel(self.visits)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(True)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.doubleClicked.connect(lambda _i: self.record_visit())
        self.matrix = FormMatrixModel(self)
        self.matrix_view = QTableView()
        self.matrix_view.setObjectName("formMatrix")
        self.matrix_view.setModel(self.matrix)
        self.matrix_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.matrix_view.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.matrix_view.verticalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.matrix_view.activated.connect(self.open_form)
        self.matrix_view.doubleClicked.connect(self.open_form)
        visits_tab = QWidget()
        vt = QVBoxLayout(visits_tab)
        vt.setContentsMargins(0, 0, 0, 0)
        split = QSplitter(Qt.Orientation.Vertical)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(QLabel("<b>Visit timeline</b>"))
        tl.addWidget(self.table)
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(QLabel("<b>Forms</b> — double-click or press Enter on a cell to open it"))
        bl.addWidget(self.matrix_view)
        legend = QLabel(self.matrix.legend())
        legend.setObjectName("SubHeader")
        bl.addWidget(legend)
        split.addWidget(top)
        split.addWidget(bottom)
        split.setSizes([260, 300])
        vt.addWidget(split)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("subjectTabs")
        self.tabs.addTab(visits_tab, "Visits && forms")
        self.ae_tab = AeTab(ctx)
        self.dosing_tab = DosingTab(ctx)
        self.tabs.addTab(self.ae_tab, "Adverse events")
        self.tabs.addTab(self.dosing_tab, "Dosing")
        self.ae_tab.changed.connect(self.changed)
        self.dosing_tab.changed.connect(self.changed)
        layout.addWidget(self.tabs, 1)

        buttons = QHBoxLayout()
        self.visit_button = QPushButton(icon("visit"), "Record &visit date…")
        self.baseline_button = QPushButton(icon("baseline"), "Set &baseline…")
        self.end_button = QPushButton(icon("withdraw"), "&End participation…")
        self.sign_button = QPushButton("Sign &casebook…")
        self.sign_button.setVisible(allowed(ctx.user.role, Action.SIGN))
        self.sign_button.clicked.connect(self.sign_casebook)
        self.lock_button = QPushButton("&Lock subject…")
        self.lock_button.setVisible(allowed(ctx.user.role, Action.LOCK))
        self.lock_button.clicked.connect(self.lock_subject)
        self.unlock_button = QPushButton("&Unlock…")
        self.unlock_button.setVisible(allowed(ctx.user.role, Action.LOCK))
        self.unlock_button.clicked.connect(self.unlock)
        for b in (self.visit_button, self.baseline_button, self.end_button, self.sign_button,
                  self.lock_button, self.unlock_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.visit_button.clicked.connect(self.record_visit)
        self.baseline_button.clicked.connect(self.set_baseline)
        self.end_button.clicked.connect(self.end_participation)
        self._update_buttons()

    def show_subject(self, subject_id: int | None) -> None:
        if subject_id is None:
            self.detail = None
            self.title.setText("Select a subject")
            self.visits.set_rows([])
            self.matrix.set_matrix(FormMatrix([], [], {}))
            self.ae_tab.show_subject(None)
            self.dosing_tab.show_subject(None)
            self._update_buttons()
            return
        d = self.detail = svc.subject_detail(self.ctx, subject_id)
        self.title.setText(f"Subject {d.screening_number} ({d.initials})")
        self.facts["Site"].setText(f"{d.site} — {d.site_name}")
        self.facts["Arm"].setText(d.arm_name)
        self.facts["Sex / born"].setText(f"{SEXES.get(d.sex, d.sex)} / {d.birth_year}")
        self.facts["Consent"].setText(d.consent_date.isoformat())
        self.facts["Enrolled"].setText(d.enrolled_on.isoformat())
        self.facts["Baseline"].setText(d.baseline_date.isoformat() if d.baseline_date
                                       else "not yet (screening)")
        status = SubjectStatus.LABELS.get(d.status, d.status)
        if d.status_date:
            status += f" on {d.status_date.isoformat()}"
        self.facts["Status"].setText(status)
        self.facts["Reason"].setText(d.status_reason or "—")
        from crf_app.services.signoff import active_locks

        self.locks = active_locks(self.ctx, d.id)
        if self.locks:
            self.facts["Status"].setText(self.facts["Status"].text() + " · 🔒 locked ("
                                         + ", ".join(lk.scope for lk in self.locks) + ")")
        self.visits.set_rows(d.visits)
        self.table.resizeRowsToContents()
        self.matrix.set_matrix(form_matrix(self.ctx, d.id))
        self.ae_tab.show_subject(d.id)
        self.dosing_tab.show_subject(d.id)
        self._update_buttons()

    def _update_buttons(self) -> None:
        active = self.detail is not None and self.detail.status in SubjectStatus.ACTIVE
        can_edit = allowed(self.ctx.user.role, Action.EDIT_DATA)
        self.visit_button.setEnabled(active and can_edit)
        self.baseline_button.setEnabled(active and can_edit)
        self.end_button.setEnabled(active and allowed(self.ctx.user.role, Action.CHANGE_STATUS))

    def _selected_visit(self) -> svc.VisitRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self.visits.row(rows[0].row()) if rows else None

    def record_visit(self) -> None:
        visit = self._selected_visit()
        if visit is None or self.detail is None or not self.visit_button.isEnabled():
            return
        window = (f" Window: {visit.window_start} to {visit.window_end}; a date outside it is "
                  "recorded as a protocol deviation." if visit.window_start else "")
        dlg = DateReasonDialog(
            f"{visit.name} — {self.detail.screening_number}",
            f"Date the {visit.name} visit took place.{window}",
            visit.actual_date or visit.planned_date or self.ctx.today(),
            reason_required=visit.actual_date is not None,
            action=lambda d, reason, _c: svc.record_visit_date(self.ctx, visit.id, d, reason),
            parent=self)
        if dlg.exec():
            self._after_change()

    def set_baseline(self) -> None:
        d = self.detail
        if d is None:
            return
        dlg = DateReasonDialog(
            f"Baseline — {d.screening_number}",
            "Study day 1. The visit schedule and windows are computed from it.",
            d.baseline_date or self.ctx.today(), reason_required=d.baseline_date is not None,
            action=lambda day, reason, _c: svc.set_baseline(self.ctx, d.id, day, reason),
            parent=self)
        if dlg.exec():
            self._after_change()

    def end_participation(self) -> None:
        d = self.detail
        if d is None:
            return
        choices = [(SubjectStatus.WITHDRAWN, "Withdrawn")]
        if d.status == SubjectStatus.ON_STUDY:
            choices.insert(0, (SubjectStatus.COMPLETED, "Completed"))
        else:
            choices.insert(0, (SubjectStatus.SCREEN_FAILED, "Screen failure"))
        dlg = DateReasonDialog(
            f"End participation — {d.screening_number}",
            "Record that the subject's participation ends, with the date and the reason.",
            self.ctx.today(), reason_required=True, reason_label="Reason", choices=choices,
            action=lambda day, reason, status: svc.end_participation(self.ctx, d.id, status,
                                                                     day, reason),
            parent=self)
        if dlg.exec():
            self._after_change()

    def open_form(self, index) -> None:
        cell = self.matrix.data(index, CellRole)
        if cell is None or self.detail is None:
            return
        dlg = FormDialog(self.ctx, cell.visit_id, cell.form_id, self)
        dlg.exec()
        if dlg.saved_any:
            self._after_change()

    def sign_casebook(self) -> None:
        from crf_app.gui.signature_dialog import SignatureDialog

        if self.detail is None:
            return
        dlg = SignatureDialog(self.ctx, self.detail.id, scope="casebook",
                              what=f"the whole casebook of subject "
                                   f"{self.detail.screening_number}", parent=self)
        if dlg.exec():
            self._after_change()

    def lock_subject(self) -> None:
        from PySide6.QtWidgets import QInputDialog, QMessageBox

        from crf_app.domain.errors import CrfError
        from crf_app.services.signoff import lock

        if self.detail is None:
            return
        reason, ok = QInputDialog.getText(self, "Lock subject",
                                          "Reason for locking (nobody can change the data "
                                          "until it is unlocked):")
        if not ok:
            return
        try:
            lock(self.ctx, "subject", self.detail.id, reason)
        except CrfError as exc:
            QMessageBox.warning(self, "Not locked", str(exc))
            return
        self._after_change()

    def unlock(self) -> None:
        from PySide6.QtWidgets import QInputDialog, QMessageBox

        from crf_app.domain.errors import CrfError
        from crf_app.services.signoff import unlock

        locks = getattr(self, "locks", [])
        if self.detail is None or not locks:
            return
        labels = [f"{lk.scope} lock by {lk.locked_by}: {lk.reason}" for lk in locks]
        choice, ok = QInputDialog.getItem(self, "Unlock", "Lock to lift:", labels, 0, False)
        if not ok:
            return
        reason, ok = QInputDialog.getText(self, "Unlock", "Reason for unlocking (audited):")
        if not ok:
            return
        try:
            unlock(self.ctx, locks[labels.index(choice)].id, reason)
        except CrfError as exc:
            QMessageBox.warning(self, "Not unlocked", str(exc))
            return
        self._after_change()

    def _after_change(self) -> None:
        if self.detail is not None:
            self.show_subject(self.detail.id)
            self.changed.emit(self.detail.id)
