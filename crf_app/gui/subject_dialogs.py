"""Small dialogs of the subject view: a date with a reason (visit date, baseline, end of study)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import CrfError, ValidationFailed
from crf_app.gui.widgets import DateEdit, ErrorLabel


class DateReasonDialog(QDialog):
    """Asks for a date, optionally a choice and a reason; `action` performs it (a service call).

    The dialog stays open with the message under the field when the service refuses.
    """

    def __init__(self, title: str, intro: str, value: date, *, reason_required: bool,
                 reason_label: str = "Reason for change",
                 choices: list[tuple[str, str]] | None = None,
                 action: Callable[[date, str, str], object], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setMinimumWidth(420)
        self.action = action
        self.result_value: object = None
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        text = QLabel(intro)
        text.setWordWrap(True)
        layout.addWidget(text)
        form = QFormLayout()
        self.choice = QComboBox()
        self.choice.setObjectName("choice")
        if choices:
            for code, label in choices:
                self.choice.addItem(label, code)
            form.addRow("&Status", self.choice)
        self.date = DateEdit(value)
        self.date.setObjectName("date")
        self.date_error = ErrorLabel()
        form.addRow("&Date", self.date)
        form.addRow("", self.date_error)
        self.reason = QLineEdit()
        self.reason.setObjectName("reason")
        self.reason.setPlaceholderText("required" if reason_required else "optional")
        self.reason_error = ErrorLabel()
        form.addRow(f"&{reason_label}", self.reason)
        form.addRow("", self.reason_error)
        layout.addLayout(form)
        self.other_error = ErrorLabel()
        layout.addWidget(self.other_error)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.submit)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def submit(self) -> None:
        for label in (self.date_error, self.reason_error, self.other_error):
            label.show_error("")
        try:
            self.result_value = self.action(self.date.value(), self.reason.text(),
                                            self.choice.currentData() or "")
        except ValidationFailed as exc:
            for e in exc.errors:
                target = {"reason": self.reason_error, "status": self.other_error}.get(
                    e.field, self.date_error)
                target.show_error(e.message)
            self.adjustSize()
            return
        except CrfError as exc:
            self.other_error.show_error(str(exc))
            return
        self.accept()
