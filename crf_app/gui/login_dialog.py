"""The login dialog. Lists the demo accounts only when the database is the demo study.

At start-up it appears at once and the study opens behind it (`LoginDialog.opening`): loading
SQLAlchemy, checking the schema's migrations and reading the protocol take about a second, which
the user spends typing. The study's title (and the demo accounts) show as soon as it is open; a
login asked for before that goes ahead once it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
)

from crf_app.domain.errors import CrfError
from crf_app.gui.resources import icon
from crf_app.gui.widgets import ErrorLabel

if TYPE_CHECKING:
    from crf_app.services.context import StudyHandle, UserContext

# what the user needs next (the login check, the main window), imported behind the dialog too
_NEXT_MODULES = ("crf_app.services.accounts", "crf_app.services.demo",
                 "crf_app.services.subjects")
_LATER_MODULES = ("crf_app.gui.main_window",)


def _open_behind(opener: Callable[[], StudyHandle], future: Future) -> None:
    """In a worker thread: open the study, then import what comes after the login."""
    import importlib

    try:
        study = opener()
        for name in _NEXT_MODULES:
            importlib.import_module(name)
    except BaseException as exc:  # reported by the dialog (run_gui shows it)
        future.set_exception(exc)
        return
    future.set_result(study)
    try:
        for name in _LATER_MODULES:
            importlib.import_module(name)
    except Exception:  # only a head start: the main thread imports it again
        pass


class LoginDialog(QDialog):
    POLL_MS = 10

    def __init__(self, study: StudyHandle | None, parent=None):
        super().__init__(parent)
        self.study: StudyHandle | None = None
        self.context: UserContext | None = None
        self.open_error: BaseException | None = None
        self._opener: Callable[[], StudyHandle] | None = None
        self._future: Future | None = None
        self._login_when_open = False
        self.setWindowTitle("crf-app — log in")
        self.setWindowIcon(icon("app"))
        self.setMinimumWidth(420)

        self._layout = layout = QVBoxLayout(self)
        self.title = QLabel("Opening the study…")
        self.title.setObjectName("StudyHeader")
        self.title.setWordWrap(True)
        layout.addWidget(self.title)
        self.sub = QLabel("")
        self.sub.setObjectName("SubHeader")
        layout.addWidget(self.sub)

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

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Log in")
        self.buttons.accepted.connect(self.try_login)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.username.setFocus()
        self._poll = QTimer(self)
        self._poll.setInterval(self.POLL_MS)
        self._poll.timeout.connect(self._check_opened)
        if study is not None:
            self._show_study(study)

    @classmethod
    def opening(cls, opener: Callable[[], StudyHandle], parent=None) -> LoginDialog:
        """The dialog for a study not open yet: `opener` runs in a worker thread once the
        dialog is shown; if it fails, the dialog closes with `open_error` set."""
        dlg = cls(None, parent)
        dlg._opener = opener
        return dlg

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._opener is not None and self._future is None:
            self._future = Future()
            threading.Thread(target=_open_behind, args=(self._opener, self._future),
                             name="open-study", daemon=True).start()
            self._poll.start()

    def wait_opened(self, timeout: float | None = None) -> StudyHandle | None:
        """The study once opened (waiting for it), or None if opening failed or never began."""
        if self.study is None and self._future is not None:
            try:
                self.study = self._future.result(timeout)
            except Exception:
                return None
        return self.study

    def _check_opened(self) -> None:
        if self._future is None or not self._future.done():
            return
        self._poll.stop()
        exc = self._future.exception()
        if exc is not None:
            self.open_error = exc
            self.reject()
            return
        self._show_study(self._future.result())
        if self._login_when_open:
            self.try_login()

    def _show_study(self, study: StudyHandle) -> None:
        self.study = study
        self.title.setText(study.title)
        self.sub.setText(f"{study.oid} · protocol {study.protocol.protocol_number}")
        if study.is_demo:
            from crf_app.services.demo import DEMO_ACCOUNTS, DEMO_PASSWORD

            names = ", ".join(a[0] for a in DEMO_ACCOUNTS)
            notice = QLabel(f"<b>Demo study</b> — not for real data.<br>Accounts: {names}<br>"
                            f"Password for each: <code>{DEMO_PASSWORD}</code>")
            notice.setObjectName("DemoNotice")
            notice.setWordWrap(True)
            self._layout.insertWidget(self._layout.indexOf(self.buttons), notice)

    def try_login(self) -> None:
        if self.study is None:  # still opening: log in as soon as it is open
            self._login_when_open = True
            self.error.show_error("")
            return
        from crf_app.services.accounts import login

        try:
            self.context = login(self.study, self.username.text().strip(), self.password.text())
        except CrfError as exc:  # a wrong password, or a login that cannot be written
            self.error.show_error(str(exc))
            self.password.clear()
            self.password.setFocus()
            return
        self.accept()
