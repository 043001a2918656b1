"""Asked before the login window when the database file is encrypted (SQLCipher)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import CrfError
from crf_app.services.encryption import needs_passphrase, unlock


class PassphraseDialog(QDialog):
    """Asks the database passphrase and checks it; a wrong one is said so and asked again."""

    def __init__(self, database: str | None, parent: QWidget | None = None):
        super().__init__(parent)
        self.database = database
        self.setWindowTitle("crf-app — encrypted database")
        intro = QLabel("This study's database is encrypted. Type its passphrase to open it.\n"
                       "(The passphrase is not your login password; ask the study's data "
                       "manager if you do not know it.)")
        intro.setWordWrap(True)
        self.passphrase = QLineEdit()
        self.passphrase.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase.setObjectName("passphrase")
        self.error = QLabel()
        self.error.setObjectName("fieldError")
        self.error.setWordWrap(True)
        self.error.hide()
        form = QFormLayout()
        form.addRow("&Passphrase", self.passphrase)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.try_unlock)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(buttons)
        self.setFixedWidth(480)
        self.adjustSize()

    def try_unlock(self) -> None:
        try:
            unlock(self.database, self.passphrase.text())
        except CrfError:
            self.error.setText("Passphrase: that passphrase does not open this database (or "
                               "the file is damaged). Nothing was changed — try again.")
            self.error.show()
            self.passphrase.selectAll()
            self.passphrase.setFocus()
            self.adjustSize()
            return
        self.accept()


def ask_passphrase_if_needed(database: str | None, parent: QWidget | None = None) -> bool:
    """True when the database can be opened (not encrypted, or unlocked); False if cancelled."""
    if not needs_passphrase(database):
        return True
    return bool(PassphraseDialog(database, parent).exec())
