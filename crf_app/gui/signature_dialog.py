"""The electronic-signature dialog (21 CFR 11.50, 11.200): the signer's printed name, the
meaning chosen, the password typed again; a wrong password is refused and recorded."""

from __future__ import annotations

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

from crf_app.domain.errors import AuthenticationFailed, CrfError
from crf_app.gui.widgets import ErrorLabel
from crf_app.services import signoff
from crf_app.services.context import UserContext


class SignatureDialog(QDialog):
    def __init__(self, ctx: UserContext, subject_id: int, *, scope: str, what: str,
                 visit_id: int | None = None, form_id: str | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id = subject_id
        self.scope, self.visit_id, self.form_id = scope, visit_id, form_id
        self.signature_id: int | None = None
        self.setWindowTitle("Electronic signature")
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        intro = QLabel(f"You are signing <b>{what}</b>.<br>Your signature is the legally "
                       "binding equivalent of your handwritten signature. Any later change to "
                       "the signed data invalidates it.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        form.addRow("Signer", QLabel(f"<b>{ctx.user.full_name}</b> ({ctx.user.username})"))
        self.meaning = QComboBox()
        self.meaning.setObjectName("meaning")
        self.meaning.addItems(signoff.MEANINGS)
        form.addRow("&Meaning", self.meaning)
        self.password = QLineEdit()
        self.password.setObjectName("signaturePassword")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("&Password", self.password)
        layout.addLayout(form)
        self.error = ErrorLabel()
        layout.addWidget(self.error)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Sign")
        buttons.accepted.connect(self.sign)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def sign(self) -> None:
        try:
            self.signature_id = signoff.sign(
                self.ctx, self.subject_id, scope=self.scope, password=self.password.text(),
                meaning=self.meaning.currentText(), visit_id=self.visit_id,
                form_id=self.form_id)
        except AuthenticationFailed as exc:
            self.error.show_error(str(exc))
            self.password.clear()
            return
        except CrfError as exc:
            self.error.show_error(str(exc))
            return
        self.accept()
