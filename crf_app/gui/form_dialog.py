"""Filling in one CRF: the rendered form, Save / Save as complete, reason for change, guard."""

from __future__ import annotations

from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import CrfError, ReasonRequired, StaleData, ValidationFailed
from crf_app.domain.roles import Action, allowed
from crf_app.gui.form_renderer import FormRenderer
from crf_app.gui.widgets import ErrorLabel
from crf_app.services import forms as svc
from crf_app.services.context import UserContext


class FormDialog(QDialog):
    """Opens a form of a visit; saving goes through `services.forms.save_form`."""

    def __init__(self, ctx: UserContext, visit_id: int, form_id: str,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.visit_id = visit_id
        self.form_id = form_id
        self.saved_any = False
        self.ask_reason = self._ask_reason  # replaced in tests
        snap = self.snapshot = svc.open_form(ctx, visit_id, form_id)
        self.setWindowTitle(f"{snap.form.title} — {snap.screening_number} — {snap.visit_name}")
        self.resize(860, 760)
        layout = QVBoxLayout(self)
        head = QLabel(f"<b>{snap.form.title}</b> (form {snap.form.id} v{snap.form.version}) · "
                      f"Subject {snap.screening_number} · {snap.visit_name}")
        head.setObjectName("StudyHeader")
        head.setWordWrap(True)
        layout.addWidget(head)
        self.status_label = QLabel()
        self.status_label.setObjectName("SubHeader")
        layout.addWidget(self.status_label)

        self.renderer = FormRenderer(snap.form)
        self.renderer.set_raw(snap.raw)
        self.renderer.set_queries(snap.open_queries)
        self.renderer.changed.connect(self._mark_dirty)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.renderer)
        layout.addWidget(scroll, 1)

        self.error = ErrorLabel()
        layout.addWidget(self.error)
        buttons = QHBoxLayout()
        self.complete_box = QCheckBox("Mark as &complete (all required items filled)")
        self.complete_box.setChecked(snap.status == svc.COMPLETE)
        self.complete_box.toggled.connect(self._mark_dirty)
        buttons.addWidget(self.complete_box)
        buttons.addStretch(1)
        self.save_button = QPushButton("&Save")
        self.save_button.setDefault(False)
        self.save_button.setAutoDefault(False)
        self.close_button = QPushButton("Close")
        self.close_button.setAutoDefault(False)
        self.query_button = QPushButton("Raise &query…")
        self.query_button.setAutoDefault(False)
        self.query_button.setVisible(allowed(ctx.user.role, Action.RAISE_QUERY))
        self.query_button.setEnabled(snap.saved)
        self.query_button.clicked.connect(self.raise_query)
        self.ask_query = self._ask_query  # replaced in tests
        buttons.addWidget(self.query_button)
        self.verify_button = QPushButton("&Verify (SDV)")
        self.verify_button.setAutoDefault(False)
        self.verify_button.setVisible(allowed(ctx.user.role, Action.VERIFY))
        self.verify_button.clicked.connect(self.verify)
        buttons.addWidget(self.verify_button)
        self.sign_button = QPushButton("Si&gn…")
        self.sign_button.setAutoDefault(False)
        self.sign_button.setVisible(allowed(ctx.user.role, Action.SIGN))
        self.sign_button.clicked.connect(self.sign)
        buttons.addWidget(self.sign_button)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.close_button)
        layout.addLayout(buttons)
        self.save_button.clicked.connect(self.save)
        self.close_button.clicked.connect(self.close)
        QShortcut(QKeySequence.StandardKey.Save, self, activated=self.save)

        can_edit = allowed(ctx.user.role, Action.EDIT_DATA)
        self.renderer.set_read_only(not can_edit)
        self.save_button.setEnabled(can_edit)
        self.complete_box.setEnabled(can_edit)
        self.dirty = False
        self._show_status()

    def _show_status(self) -> None:
        snap = self.snapshot
        text = f"Status: {svc.STATUS_LABELS.get(snap.status, snap.status)}"
        if snap.updated_at:
            text += (f" · last saved by {snap.updated_by} at "
                     f"{snap.updated_at.astimezone().strftime('%Y-%m-%d %H:%M')}")
        if not allowed(self.ctx.user.role, Action.EDIT_DATA):
            text += " · read only for your role"
        self.status_label.setText(text + (" · unsaved changes" if self.dirty else ""))

    def _mark_dirty(self) -> None:
        self.dirty = True
        self.error.show_error("")
        self._show_status()

    def _ask_reason(self) -> str | None:
        text, ok = QInputDialog.getText(
            self, "Reason for change",
            "You are changing values that were already saved.\nReason for change (audited):",
            QLineEdit.EchoMode.Normal)
        return text if ok else None

    def save(self, reason: str = "") -> bool:
        """Save; ask for a reason when saved values change. Returns True when saved."""
        complete = self.complete_box.isChecked()
        try:
            outcome = svc.save_form(self.ctx, self.visit_id, self.form_id, self.renderer.raw(),
                                    complete=complete, reason=reason or "",
                                    expected_version=self.snapshot.row_version)
        except ReasonRequired:
            answer = self.ask_reason()
            if not answer or not answer.strip():
                self.error.show_error("Not saved: a reason for change is required to change "
                                      "saved values.")
                return False
            return self.save(answer)
        except ValidationFailed:
            self.renderer.refresh(complete=complete)
            n = len(self.renderer.result.errors)
            items = "1 item needs" if n == 1 else f"{n} items need"
            self.error.show_error(f"Not saved: {items} correcting (shown in red).")
            widget = self.renderer.first_problem_widget()
            if widget is not None:
                widget.setFocus()
            return False
        except StaleData as exc:
            self.error.show_error(str(exc))
            return False
        except CrfError as exc:
            self.error.show_error(f"Not saved: {exc}")
            return False
        self.saved_any = True
        self.dirty = False
        self.snapshot = svc.open_form(self.ctx, self.visit_id, self.form_id)
        self.renderer.set_queries(self.snapshot.open_queries)
        self._show_status()
        note = f"Saved ({svc.STATUS_LABELS[outcome.status].lower()})."
        if outcome.undone:
            note += " " + "; ".join(sorted(set(outcome.undone))).capitalize() + "."
        if outcome.queries_opened:
            note += f" {len(outcome.queries_opened)} query(ies) raised by soft checks."
        if outcome.subject_status == "screen_failed" and self.form_id == "eligibility":
            note += " The subject is not eligible: recorded as a screen failure."
        self.status_label.setText(self.status_label.text() + " · " + note)
        return True

    def verify(self) -> None:
        from crf_app.services.signoff import verify_form

        try:
            verify_form(self.ctx, self.visit_id, self.form_id)
        except CrfError as exc:
            self.error.show_error(str(exc))
            return
        self.saved_any = True
        self.status_label.setText(self.status_label.text() + " · verified against source")

    def sign(self) -> None:
        from crf_app.gui.signature_dialog import SignatureDialog

        dlg = SignatureDialog(self.ctx, self.snapshot.subject_id, scope="form",
                              what=f"{self.snapshot.form.title} ({self.snapshot.visit_name}) of "
                                   f"subject {self.snapshot.screening_number}",
                              visit_id=self.visit_id, form_id=self.form_id, parent=self)
        if dlg.exec():
            self.saved_any = True
            self.status_label.setText(self.status_label.text() + " · signed")

    def _ask_query(self) -> tuple[str, str] | None:
        items = [i for i in self.snapshot.form.items if not i.is_computed]
        labels = [f"{i.label} ({i.id})" for i in items]
        choice, ok = QInputDialog.getItem(self, "Raise query", "Item:", labels, 0, False)
        if not ok:
            return None
        text, ok = QInputDialog.getMultiLineText(self, "Raise query", "Question for the site:")
        return (items[labels.index(choice)].id, text) if ok else None

    def raise_query(self) -> None:
        from crf_app.services.queries import raise_query

        answer = self.ask_query()
        if answer is None:
            return
        try:
            raise_query(self.ctx, self.visit_id, self.form_id, answer[0], answer[1])
        except CrfError as exc:
            self.error.show_error(str(exc))
            return
        self.snapshot = svc.open_form(self.ctx, self.visit_id, self.form_id)
        self.renderer.set_queries(self.snapshot.open_queries)
        self.saved_any = True  # the subject view refreshes its query badges
        self.status_label.setText(self.status_label.text() + " · query raised")

    def closeEvent(self, event) -> None:
        if self.dirty:
            choice = self.confirm_discard()
            if choice == QMessageBox.StandardButton.Save:
                if not self.save():
                    event.ignore()
                    return
            elif choice == QMessageBox.StandardButton.Cancel:
                event.ignore()
                return
        event.accept()
        self.done(1 if self.saved_any else 0)

    def confirm_discard(self) -> QMessageBox.StandardButton:
        return QMessageBox.question(
            self, "Unsaved changes", "This form has unsaved changes. Save them?",
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
            | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Save)
