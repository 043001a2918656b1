"""Starting the GUI: the login window at once, the study opening behind it, then the main window.

Only Qt and the dialog's own modules load before the login window shows; SQLAlchemy, the
migrations check, the protocol and the services load in a worker thread while the user types
(see LoginDialog.opening), so a cold start shows the window in well under a second.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QApplication, QMessageBox

from crf_app.domain.errors import CrfError
from crf_app.gui.resources import icon, style_sheet

if TYPE_CHECKING:
    from crf_app.gui.login_dialog import LoginDialog
    from crf_app.services.context import StudyHandle


def _skip_pyside_source_scan() -> None:
    """PySide6 reads the source of every module imported after it (PYSIDE-2029: looking for
    modules that select a `__feature__`) and so keeps the source of all of them in linecache:
    for this app's ~650 modules about 30 MB of memory, and a slower start. Only crf-app's own
    modules use PySide6; the others (SQLAlchemy, alembic, pydantic…) are taken as not using
    it without being read. Nothing changes when the hook is not there."""
    feature = sys.modules.get("shibokensupport.feature")
    scan = getattr(feature, "_mod_uses_pyside", None)
    if scan is None or getattr(scan, "crf_app", False):
        return

    def uses_pyside(module) -> bool:
        name = getattr(module, "__name__", "") or ""
        if name == "__main__" or name.startswith(("crf_app", "PySide6", "tests")):
            return bool(scan(module))
        return False

    uses_pyside.crf_app = True  # type: ignore[attr-defined]
    feature._mod_uses_pyside = uses_pyside  # type: ignore[union-attr]


_skip_pyside_source_scan()


def make_application(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName("crf-app")
    app.setOrganizationName("crf-app")
    app.setWindowIcon(icon("app"))
    app.setStyleSheet(style_sheet())
    return app  # type: ignore[return-value]


def _open(database: str | None, first_run_demo: bool) -> StudyHandle:
    """Open the study (creating the demo first on a first run): runs behind the login window."""
    from crf_app.services.context import database_exists, open_study

    if first_run_demo and not database_exists(database):
        _create_demo(database)
    return open_study(database)


def show_login(database: str | None, *,
               first_run_demo: bool = False) -> tuple[QApplication, LoginDialog]:
    """The application and its login window, shown; the study opens behind it."""
    from crf_app.gui.login_dialog import LoginDialog

    app = make_application()
    login = LoginDialog.opening(lambda: _open(database, first_run_demo))
    login.show()
    return app, login


def run_gui(database: str | None, *, first_run_demo: bool = False) -> int:
    """Open the app on `database` (default: the per-user one); returns the exit code."""
    from crf_app.gui.passphrase_dialog import ask_passphrase_if_needed

    make_application()
    if not ask_passphrase_if_needed(database):  # an encrypted database file: its passphrase
        return 0
    app, login = show_login(database, first_run_demo=first_run_demo)
    accepted = login.exec()
    if login.open_error is not None:
        exc = login.open_error
        if not isinstance(exc, CrfError):
            raise exc
        print(f"crf-app: error: {exc}", file=sys.stderr)
        QMessageBox.critical(None, "crf-app cannot open the database", str(exc))
        return 1
    study = login.study if accepted else login.wait_opened()
    if not accepted or login.context is None or study is None:
        if study is not None:
            study.close()
        return 0
    from crf_app.gui.main_window import MainWindow

    window = MainWindow(login.context)
    window.show()
    code = app.exec()
    study.close()
    return code


def _create_demo(database: str | None) -> None:
    from crf_app.services.context import open_new_database
    from crf_app.services.definitions import load_definition
    from crf_app.services.demo import create_demo_study

    print("crf-app: first run — creating the demo NA-Semax study…", file=sys.stderr)
    definition = load_definition()
    db = open_new_database(database)
    try:
        create_demo_study(db, definition.protocol, definition.forms)
    finally:
        db.dispose()
