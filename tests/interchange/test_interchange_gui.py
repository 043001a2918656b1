"""The File-menu dialogs (work off the GUI thread, progress, Cancel) and the conflicts list."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QMessageBox, QProgressDialog, QWidget

from crf_app.domain.errors import CrfError
from crf_app.gui import interchange_dialogs as dialogs
from crf_app.gui.conflicts import ConflictsDialog, ConflictTableModel
from crf_app.services.forms import open_form, save_form
from crf_app.services.odm_export import export_odm
from crf_app.services.odm_import import import_odm, list_conflicts
from crf_app.services.subjects import list_subjects, subject_detail


@pytest.fixture(autouse=True)
def _no_modal_boxes(monkeypatch):
    for name in ("question", "warning", "critical", "information"):
        monkeypatch.setattr(QMessageBox, name,
                            staticmethod(lambda *a, **k: QMessageBox.StandardButton.Ok))
    monkeypatch.setattr(dialogs.ReportDialog, "exec", lambda self: 0)


def _pulse(ctx, value, reason):
    sid = next(r.id for r in list_subjects(ctx) if r.screening_number == "S03-003")
    scr = subject_detail(ctx, sid).visits[0].id
    raw = dict(open_form(ctx, scr, "vital_signs").raw, PULSE=value)
    save_form(ctx, scr, "vital_signs", raw, complete=True, reason=reason)


@pytest.fixture
def with_conflict(laptop_a, laptops, tmp_path):
    export_odm(laptop_a.dm, tmp_path / "x1.xml")
    b = laptops("b")
    import_odm(b.dm, tmp_path / "x1.xml")
    _pulse(laptop_a.inv, "95", "on A")
    _pulse(b.inv, "99", "on B")
    export_odm(laptop_a.dm, tmp_path / "x2.xml")
    import_odm(b.dm, tmp_path / "x2.xml")
    return b


def test_conflict_model_passes_the_qt_model_tester(with_conflict, qtmodeltester):
    model = ConflictTableModel()
    model.set_rows(list_conflicts(with_conflict.dm))
    assert model.rowCount() == 1
    qtmodeltester.check(model)


def test_a_data_manager_takes_the_incoming_value_from_the_list(with_conflict, qtbot):
    dialog = ConflictsDialog(with_conflict.dm)
    qtbot.addWidget(dialog)
    assert dialog.model.rowCount() == 1
    assert not dialog.take_button.isEnabled()
    dialog.table.selectRow(0)
    assert dialog.take_button.isEnabled() and dialog.keep_button.isEnabled()
    dialog.reason.setText("source document says 95")
    dialog.take_button.click()
    assert dialog.model.rowCount() == 0
    assert list_conflicts(with_conflict.dm, state="resolved")[0].resolution == "incoming"


def test_an_investigator_sees_conflicts_but_cannot_resolve_them(with_conflict, qtbot):
    dialog = ConflictsDialog(with_conflict.inv)
    qtbot.addWidget(dialog)
    dialog.table.selectRow(0)
    assert not dialog.take_button.isEnabled() and not dialog.keep_button.isEnabled()


def test_work_runs_off_the_gui_thread_and_returns_its_result(qtbot):
    seen = {}

    def work(progress, cancelled):
        seen["thread"] = threading.current_thread()
        for i in range(5):
            progress(i + 1, 5)
        return "done"

    assert dialogs.run_with_progress(None, "t", "working", work) == "done"
    assert seen["thread"] is not threading.main_thread()


def test_errors_come_back_to_the_gui_thread(qtbot):
    def work(progress, cancelled):
        raise CrfError("refused: the file is for another study")

    with pytest.raises(CrfError, match="another study"):
        dialogs.run_with_progress(None, "t", "working", work)


def test_cancel_stops_the_work(qtbot):
    parent = QWidget()
    qtbot.addWidget(parent)

    def work(progress, cancelled):
        while not cancelled():
            threading.Event().wait(0.01)
        raise CrfError("cancelled; nothing was imported")

    QTimer.singleShot(100, lambda: parent.findChild(QProgressDialog).canceled.emit())
    with pytest.raises(dialogs.Cancelled):
        dialogs.run_with_progress(parent, "t", "working", work)


def test_export_and_import_from_the_file_menu(laptop_a, laptops, tmp_path, qtbot,
                                              monkeypatch):
    out = tmp_path / "menu.xml"

    def accept(self):
        self.path.setText(str(out))
        return 1

    monkeypatch.setattr(dialogs.OdmExportDialog, "exec", accept)
    summary = dialogs.export_odm_interactive(None, laptop_a.dm)
    assert out.exists() and summary.subjects == 6
    b = laptops("b")
    report = dialogs.import_odm_interactive(None, b.dm, path=out)
    assert report is not None and report.subjects_added == 6
    assert dialogs.import_odm_interactive(None, b.dm, path=out).already_imported
    monkeypatch.setattr(dialogs.QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(tmp_path / "csv")))
    csv_summary = dialogs.export_csv_interactive(None, b.dm)
    assert csv_summary.subjects == 6 and (tmp_path / "csv" / "vital_signs.csv").exists()


def test_main_window_file_menu_imports_a_laptop_file_and_lists_the_new_subjects(
        laptop_a, laptops, tmp_path, qtbot):
    from crf_app.gui.main_window import MainWindow

    export_odm(laptop_a.dm, tmp_path / "a.xml")
    b = laptops("b")
    win = MainWindow(b.dm)
    qtbot.addWidget(win)
    file_menu = next(a.menu() for a in win.menuBar().actions() if a.text() == "&File")
    titles = [a.text() for a in file_menu.actions()]
    assert "Export &ODM 1.3.2…" in titles and "Export &CSV…" in titles
    assert win.import_odm_action.isEnabled() and win.conflicts_action.isEnabled()
    assert win.model.rowCount() == 0
    win.import_odm(tmp_path / "a.xml")
    assert win.model.rowCount() == 6


def test_an_investigator_cannot_import_or_export(laptop_a, qtbot):
    from crf_app.gui.main_window import MainWindow

    win = MainWindow(laptop_a.inv)
    qtbot.addWidget(win)
    assert not win.import_odm_action.isEnabled()
    assert not win.export_odm_action.isEnabled() and not win.export_csv_action.isEnabled()
