"""Starting the GUI: open (or create the demo) database, log in, show the main window."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication, QMessageBox

from crf_app.domain.errors import CrfError
from crf_app.gui.resources import icon, style_sheet


def make_application(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName("crf-app")
    app.setOrganizationName("crf-app")
    app.setWindowIcon(icon("app"))
    app.setStyleSheet(style_sheet())
    return app  # type: ignore[return-value]


def run_gui(database: str | None, *, first_run_demo: bool = False) -> int:
    """Open the app on `database` (default: the per-user one); returns the exit code."""
    from crf_app.gui.login_dialog import LoginDialog
    from crf_app.gui.main_window import MainWindow
    from crf_app.services.context import database_exists, open_study

    app = make_application()
    try:
        if first_run_demo and not database_exists(database):
            _create_demo(database)
        study = open_study(database)
    except CrfError as exc:
        print(f"crf-app: error: {exc}", file=sys.stderr)
        QMessageBox.critical(None, "crf-app cannot open the database", str(exc))
        return 1
    login = LoginDialog(study)
    if not login.exec() or login.context is None:
        study.close()
        return 0
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
