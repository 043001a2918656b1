"""Idle auto-lock: after N minutes without keyboard or mouse input the window is covered and
the same user must type their password again (21 CFR 11.300 session controls)."""

from __future__ import annotations

import os

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import CrfError
from crf_app.gui.widgets import ErrorLabel
from crf_app.services.accounts import login
from crf_app.services.context import UserContext

DEFAULT_IDLE_MINUTES = 15
ENV_IDLE_MINUTES = "CRF_IDLE_LOCK_MINUTES"
_INPUT_EVENTS = {QEvent.Type.KeyPress, QEvent.Type.MouseButtonPress, QEvent.Type.MouseMove,
                 QEvent.Type.Wheel}


def idle_minutes() -> float:
    """From CRF_IDLE_LOCK_MINUTES (0 turns the lock off), else 15 minutes."""
    try:
        return max(0.0, float(os.environ.get(ENV_IDLE_MINUTES, DEFAULT_IDLE_MINUTES)))
    except ValueError:
        return DEFAULT_IDLE_MINUTES


class UnlockDialog(QDialog):
    """Only the logged-in user's password unlocks the session (wrong tries count as failed
    logins, so five of them lock the account)."""

    def __init__(self, ctx: UserContext, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.setWindowTitle("crf-app — locked")
        self.setModal(True)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"The session was locked after inactivity.<br>Enter the password "
                                f"of <b>{ctx.user.full_name}</b> ({ctx.user.username}) to "
                                "continue."))
        self.password = QLineEdit()
        self.password.setObjectName("unlockPassword")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        layout.addWidget(self.password)
        self.error = ErrorLabel()
        layout.addWidget(self.error)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Unlock")
        buttons.accepted.connect(self.try_unlock)
        layout.addWidget(buttons)

    def try_unlock(self) -> None:
        try:
            login(self.ctx.study, self.ctx.user.username, self.password.text())
        except CrfError as exc:  # a wrong password, or a login that cannot be written
            self.error.show_error(str(exc))
            self.password.clear()
            return
        self.accept()

    def reject(self) -> None:  # Escape does not unlock
        return


class IdleLock(QObject):
    """Watches application input; calls `lock()` after `minutes` of silence."""

    def __init__(self, window: QWidget, ctx: UserContext, minutes: float | None = None):
        super().__init__(window)
        self.window = window
        self.ctx = ctx
        self.minutes = idle_minutes() if minutes is None else minutes
        self.locked = False
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.lock)
        if self.minutes > 0:
            self.timer.start(int(self.minutes * 60_000))
            QApplication.instance().installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        if event.type() in _INPUT_EVENTS and not self.locked:
            self.timer.start()
        return False

    def lock(self) -> None:
        if self.locked:
            return
        self.locked = True
        self.window.setEnabled(False)
        self.dialog = UnlockDialog(self.ctx, self.window)
        self.dialog.accepted.connect(self._unlocked)
        self.dialog.open()

    def _unlocked(self) -> None:
        self.locked = False
        self.window.setEnabled(True)
        self.timer.start()
