"""The login dialog, the main window's subject list, enrolment and the visit timeline."""

from datetime import date, timedelta

import pytest
from PySide6.QtCore import Qt

from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.gui.enroll_dialog import EnrollDialog
from crf_app.gui.login_dialog import LoginDialog
from crf_app.gui.main_window import MainWindow
from crf_app.gui.subject_dialogs import DateReasonDialog
from crf_app.gui.subject_model import SubjectTableModel, VisitTableModel
from crf_app.services import subjects as svc
from tests.conftest import PASSWORD


@pytest.fixture
def enrolled(coordinator):
    today = coordinator.today()
    ids = []
    for i, initials in enumerate(["ABC", "DEF", "GHI"], start=1):
        ids.append(svc.enroll_subject(coordinator, Enrollment(
            f"S01-00{i}", "S01", initials, 1960, "F", "NSX", today - timedelta(days=20),
            today - timedelta(days=20), today - timedelta(days=15) if i != 3 else None)))
    return ids


def test_login_dialog_refuses_wrong_password_then_logs_in(qtbot, study):
    dlg = LoginDialog(study)
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.keyClicks(dlg.username, "coord")
    qtbot.keyClicks(dlg.password, "wrong")
    qtbot.keyClick(dlg.password, Qt.Key.Key_Return)
    assert dlg.context is None and "Wrong user name or password" in dlg.error.text()
    assert dlg.password.text() == ""
    qtbot.keyClicks(dlg.password, PASSWORD)
    qtbot.keyClick(dlg.password, Qt.Key.Key_Return)
    assert dlg.context is not None and dlg.context.user.role is Role.COORDINATOR
    assert "Demo study" not in " ".join(w.text() for w in dlg.findChildren(type(dlg.error)))


def test_main_window_lists_and_filters_subjects(qtbot, study, coordinator, enrolled):
    win = MainWindow(coordinator)
    qtbot.addWidget(win)
    assert win.model.rowCount() == 3
    assert "NASEMAX-PSR-01" in win.windowTitle()
    qtbot.keyClicks(win.filter, "ghi")
    assert win.model.rowCount() == 1
    assert win.model.index(0, 0).data() == "S01-003"
    win.filter.clear()
    assert win.select_subject(enrolled[0])
    assert win.subject_view.title.text().startswith("Subject S01-001")
    assert win.subject_view.visits.rowCount() == 5


def test_enroll_dialog_by_keyboard(qtbot, study, coordinator):
    dlg = EnrollDialog(coordinator)
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.keyClicks(dlg.screening_number, "s01-042")
    assert dlg.screening_number.text() == "S01-042"
    qtbot.keyClicks(dlg.initials, "x")
    dlg.initials.clearFocus()
    qtbot.wait(10)
    assert not dlg.ok_button.isEnabled()
    assert "Initials" in dlg.errors["initials"].text()
    qtbot.keyClicks(dlg.initials, "yz")
    dlg.sex.setCurrentIndex(dlg.sex.findData("M"))
    assert dlg.errors["initials"].text() == "" or not dlg.errors["initials"].isVisible()
    assert dlg.ok_button.isEnabled()
    qtbot.mouseClick(dlg.ok_button, Qt.MouseButton.LeftButton)
    assert dlg.subject_id is not None
    detail = svc.subject_detail(coordinator, dlg.subject_id)
    assert (detail.screening_number, detail.initials, detail.sex) == ("S01-042", "XYZ", "M")


def test_enroll_dialog_shows_duplicate_number_at_the_field(qtbot, study, coordinator, enrolled):
    dlg = EnrollDialog(coordinator)
    qtbot.addWidget(dlg)
    qtbot.keyClicks(dlg.screening_number, "S01-001")
    qtbot.keyClicks(dlg.initials, "QQ")
    dlg.sex.setCurrentIndex(dlg.sex.findData("F"))
    dlg.submit()
    assert dlg.subject_id is None
    assert "already used" in dlg.errors["screening_number"].text()


def test_record_visit_out_of_window_shows_deviation(qtbot, study, coordinator, enrolled,
                                                    monkeypatch):
    win = MainWindow(coordinator)
    qtbot.addWidget(win)
    win.select_subject(enrolled[0])
    view = win.subject_view
    view.table.selectRow(2)  # Day 7
    d7 = view.visits.row(2)
    seen = {}

    def fake_exec(dlg):
        seen["title"] = dlg.windowTitle()
        dlg.date.set_value(d7.window_end + timedelta(days=2))
        dlg.submit()
        return dlg.result()

    monkeypatch.setattr(DateReasonDialog, "exec", fake_exec)
    view.record_visit()
    assert seen["title"].startswith("Day 7")
    row = view.visits.row(2)
    assert row.status == "done" and "2 days late" in row.deviation
    assert view.visits.index(2, 6).data() == row.deviation


def test_table_models_pass_qtmodeltester(qtmodeltester, coordinator, enrolled):
    m = SubjectTableModel()
    m.set_rows(svc.list_subjects(coordinator))
    qtmodeltester.check(m)
    v = VisitTableModel()
    v.set_rows(svc.subject_detail(coordinator, enrolled[0]).visits)
    qtmodeltester.check(v)
    assert v.rowCount() == 5 and v.index(0, 0).data() == "Screening"


def test_monitor_cannot_enrol_from_the_window(qtbot, as_role, enrolled):
    win = MainWindow(as_role(Role.MONITOR))
    qtbot.addWidget(win)
    assert not win.enroll_action.isEnabled()
    win.select_subject(enrolled[0])
    assert not win.subject_view.visit_button.isEnabled()
    assert date.today().year > 2000


def test_subject_list_sorts_and_filters_in_the_model(qtmodeltester, coordinator, enrolled):
    m = SubjectTableModel()
    m.set_rows(svc.list_subjects(coordinator))
    m.sort(1, Qt.SortOrder.DescendingOrder)
    assert [m.index(r, 1).data() for r in range(m.rowCount())] == ["GHI", "DEF", "ABC"]
    m.set_filter("  def ")
    assert m.rowCount() == 1 and m.row(0).initials == "DEF" and m.total() == 3
    qtmodeltester.check(m)
    m.set_filter("")
    assert m.rowCount() == 3
