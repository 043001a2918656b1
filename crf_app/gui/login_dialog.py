"""The login dialog. Lists the demo accounts only when the database is the demo study."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
)

from crf_app.domain.errors import AuthenticationFailed
from crf_app.gui.resources import icon
from crf_app.gui.widgets import ErrorLabel
from crf_app.services.accounts import login
from crf_app.services.context import StudyHandle, UserContext
from crf_app.services.demo import DEMO_ACCOUNTS, DEMO_PASSWORD


class LoginDialog(QDialog):
    def __init__(self, study: StudyHandle, parent=None):
        super().__init__(parent)
        self.study = study
        self.context: UserContext | None = None
        self.setWindowTitle("crf-app — log in")
        self.setWindowIcon(icon("app"))
        self.setMinimumWidth(420)

        layout = QVBoxLayout(self)
        title = QLabel(study.title)
        title.setObjectName("StudyHeader")
        title.setWordWrap(True)
        layout.addWidget(title)
        sub = QLabel(f"{study.oid} · protocol {study.protocol.protocol_number}")
        sub.setObjectName("SubHeader")
        layout.addWidget(sub)

        form = QFormLayout()
        self.username = QLineEdit()
        self.username.setObjectName("username")
        self.password = QLineEdit()
        self.password.setObjectName("password")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("&User name", self.username)
        form.addRow("&Password", self.password)
        layout.addLayout(form)
        self.error = ErrorLabel()
        layout.addWidget(self.error)

        if study.is_demo:
            names = ", ".join(a[0] for a in DEMO_ACCOUNTS)
            notice = QLabel(f"<b>Demo study</b> — not for real data.<br>Accounts: {names}<br>"
                            f"Password for each: <code>{DEMO_PASSWORD}</code>")
            notice.setObjectName("DemoNotice")
            notice.setWordWrap(True)
            layout.addWidget(notice)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Log in")
        self.buttons.accepted.connect(self.try_login)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.username.setFocus()

    def try_login(self) -> None:
        try:
            self.context = login(self.study, self.username.text().strip(), self.password.text())
        except AuthenticationFailed as exc:
            self.error.show_error(str(exc))
            self.password.clear()
            self.password.setFocus()
            return
        self.accept()
