"""The AE and dosing tabs, their dialogs, the SAE banner and the course timeline."""

from datetime import date, time, timedelta

import pytest
from PySide6.QtGui import QColor

from crf_app.domain.adverse_events import AeInput
from crf_app.domain.dosing import DoseInput
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.gui.ae_dialog import AeDialog, SaeReportDialog
from crf_app.gui.ae_tab import AeTab
from crf_app.gui.course_timeline import GREEN, CourseTimeline
from crf_app.gui.dose_dialogs import DoseDialog, UsualDayDialog
from crf_app.gui.dosing_tab import DosingTab
from crf_app.gui.log_table_models import AeTableModel, DoseTableModel
from crf_app.gui.sae_banner import SaeBanner
from crf_app.services import adverse_events as ae_svc
from crf_app.services import dosing as dose_svc
from crf_app.services import reports
from crf_app.services import subjects as svc
from tests.conftest import fixed_clock

NOW = fixed_clock()()  # 2026-11-24 10:00 UTC
SAE = AeInput(term="DIZZINESS", start_date="2026-11-20", ongoing=True, severity="SEVERE",
              grade="3", serious="Y", criteria=["HOSPITALISATION"], action="INTERRUPTED",
              outcome="RECOVERING")


@pytest.fixture
def coord(coordinator):
    coordinator.clock = fixed_clock()
    return coordinator


@pytest.fixture
def sid(coord):
    return svc.enroll_subject(coord, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                                date(2026, 11, 17), date(2026, 11, 17),
                                                date(2026, 11, 18)))


def pick(combo, code):
    combo.setCurrentIndex(combo.findData(code))


def type_text(qtbot, edit, text):
    edit.clear()
    qtbot.keyClicks(edit, text)


def test_record_an_adverse_event_through_the_dialog(qtbot, coord, sid):
    tab = AeTab(coord)
    qtbot.addWidget(tab)
    tab.show_subject(sid)
    assert tab.model.rowCount() == 0 and tab.banner.isHidden()
    seen = {}

    def fill(dlg: AeDialog) -> int:
        dlg.show()
        assert not dlg.ok_button.isEnabled()
        assert not dlg.relationship.isEnabled()  # causality is the investigator's
        pick(dlg.term, "HEADACHE")
        type_text(qtbot, dlg.start_date, "2026-11-20")
        type_text(qtbot, dlg.end_date, "2026-11-19")
        message = dlg.form.errors["end_date"]
        assert message.isVisible() and "must not be before the start date" in message.text()
        type_text(qtbot, dlg.end_date, "2026-11-21")
        assert not dlg.form.errors["end_date"].isVisible()
        for combo, code in ((dlg.severity, "MILD"), (dlg.grade, "1"), (dlg.serious, "N"),
                            (dlg.action, "NONE")):
            pick(combo, code)
        assert not dlg.ok_button.isEnabled() and "Outcome" in dlg.summary.text()
        pick(dlg.outcome, "RECOVERED")
        assert dlg.ok_button.isEnabled()
        seen["dialog"] = dlg
        dlg.submit()
        return dlg.result()

    tab.run_dialog = fill
    with qtbot.waitSignal(tab.changed) as signal:
        tab.add_button.click()
    assert signal.args == [sid]
    assert tab.model.rowCount() == 1
    assert tab.model.index(0, 1).data() == "Headache"
    assert tab.model.index(0, 7).data() == "not yet assessed"
    assert seen["dialog"].saved_id == tab.model.row(0).id


def test_sae_banner_appears_and_goes_when_reported(qtbot, coord, sid):
    tab = AeTab(coord)
    main_banner = SaeBanner(coord)
    qtbot.addWidget(tab)
    qtbot.addWidget(main_banner)
    tab.show_subject(sid)
    assert main_banner.isHidden()

    def fill(dlg: AeDialog) -> int:
        dlg.set_input(SAE)
        assert dlg.ok_button.isEnabled()
        dlg.submit()
        return dlg.result()

    tab.run_dialog = fill
    tab.add_button.click()
    main_banner.refresh()
    deadline = (NOW + timedelta(hours=24)).astimezone().strftime("%Y-%m-%d %H:%M")
    expected = f"SAE: Dizziness for S01-001 — report by {deadline} (24 h 00 min left)"
    for banner in (tab.banner, main_banner):
        assert not banner.isHidden() and banner.text() == expected
    assert tab.model.index(0, AeTableModel.SAE).data() == "24 h 00 min left to report"

    tab.table.selectRow(0)
    assert tab.report_button.isEnabled()

    def report(dlg: SaeReportDialog) -> int:
        assert isinstance(dlg, SaeReportDialog)
        dlg.when.setDateTime(dlg.when.dateTime().addSecs(-3600))
        dlg.submit()
        return dlg.result()

    tab.run_dialog = report
    tab.report_button.click()
    main_banner.refresh()
    assert tab.banner.isHidden() and main_banner.isHidden()
    assert tab.model.index(0, AeTableModel.SAE).data() == "Reported on time"


def test_correcting_an_event_needs_a_reason_and_the_investigator_assesses(qtbot, coord, sid,
                                                                          as_role):
    ae_id = ae_svc.record_adverse_event(coord, sid, SAE)
    inv = as_role(Role.INVESTIGATOR)
    inv.clock = fixed_clock()
    row = ae_svc.list_adverse_events(inv, sid)[0]
    dlg = AeDialog(inv, sid, row)
    qtbot.addWidget(dlg)
    assert dlg.relationship.isEnabled()
    pick(dlg.relationship, "POSSIBLE")
    assert dlg.ok_button.isEnabled()  # a first assessment changes no saved value
    pick(dlg.grade, "4")
    assert not dlg.ok_button.isEnabled() and dlg.reason_error.text()
    type_text(qtbot, dlg.reason, "hospital letter: life-threatening arrhythmia")
    dlg.criteria["LIFE_THREATENING"].setChecked(True)
    assert dlg.ok_button.isEnabled()
    dlg.submit()
    assert dlg.result() and dlg.saved_id == ae_id
    row = ae_svc.list_adverse_events(coord, sid)[0]
    assert (row.relationship, row.grade) == ("POSSIBLE", 4)
    assert row.criteria == ("LIFE_THREATENING", "HOSPITALISATION")


def test_usual_day_and_a_late_out_of_range_dose_through_the_tab(qtbot, coord, sid):
    tab = DosingTab(coord)
    qtbot.addWidget(tab)
    tab.show_subject(sid)
    assert tab.model.rowCount() == 0 and tab.usual_button.isEnabled()

    def usual(dlg: UsualDayDialog) -> int:
        type_text(qtbot, dlg.date, "2026-11-18")
        type_text(qtbot, dlg.time, "08:00")
        dlg.lot.setText("L\t1")  # pasted: a tab typed would move the focus
        assert not dlg.ok_button.isEnabled()
        assert "control characters" in dlg.form.errors["lot"].text()
        type_text(qtbot, dlg.lot, "NSX-01")
        assert dlg.ok_button.isEnabled()
        assert "08:00" in dlg.preview.text() and "12:00" in dlg.preview.text()
        dlg.submit()
        return dlg.result()

    tab.run_dialog = usual
    with qtbot.waitSignal(tab.changed):
        tab.usual_button.click()
    assert tab.model.rowCount() == 2
    assert [tab.model.index(r, 2).data() for r in range(2)] == ["08:00", "12:00"]
    assert "2 of 14 planned" in tab.compliance.text()
    assert tab.timeline.timeline is not None and tab.timeline.timeline.days[0].instillations == 2

    def late(dlg: DoseDialog) -> int:
        assert dlg.lot.text() == "NSX-01"  # the last lot is offered
        type_text(qtbot, dlg.date, "2026-11-18")
        type_text(qtbot, dlg.time, "19:30")
        type_text(qtbot, dlg.dose_mg, "0")
        assert "more than 0 mg" in dlg.form.errors["dose_mg"].text()
        assert not dlg.ok_button.isEnabled()
        type_text(qtbot, dlg.dose_mg, "0.5")
        type_text(qtbot, dlg.instillations, "1")
        pick(dlg.nostril, "LEFT")
        assert dlg.ok_button.isEnabled()
        assert "Query will be raised" in dlg.form.notes["dose_mg"].text()
        assert "Warning" in dlg.form.notes["time"].text()
        dlg.submit()
        return dlg.result()

    tab.run_dialog = late
    tab.add_button.click()
    assert tab.model.rowCount() == 3
    assert "1 query(ies) raised" in tab.message.text() and "Warning" in tab.message.text()
    late_row = next(r for r in tab.model.rows() if r.dose_mg == dose_svc.Decimal("0.5"))
    assert late_row.open_queries and tab.timeline.timeline.days[0].flagged


def test_missed_dose_hides_the_dose_fields(qtbot, coord, sid):
    dlg = DoseDialog(coord, sid)
    qtbot.addWidget(dlg)
    dlg.show()
    dlg.missed.setChecked(True)
    assert not dlg.dose_mg.isVisible() and dlg.missed_reason.isVisible()
    assert not dlg.ok_button.isEnabled()
    type_text(qtbot, dlg.missed_reason, "Forgot")
    assert dlg.ok_button.isEnabled()
    dlg.submit()
    assert dose_svc.list_doses(coord, sid)[0].missed


def test_not_randomised_and_monitor_cannot_enter(qtbot, coord, sid, as_role):
    screening = svc.enroll_subject(coord, Enrollment("S01-002", "S01", "DEF", 1970, "M", "NSX",
                                                     date(2026, 11, 20), date(2026, 11, 20)))
    tab = DosingTab(coord)
    qtbot.addWidget(tab)
    tab.show_subject(screening)
    assert not tab.usual_button.isEnabled() and not tab.add_button.isEnabled()
    assert "Not randomised" in tab.compliance.text()
    monitor = as_role(Role.MONITOR)
    monitor.clock = fixed_clock()
    for tab in (DosingTab(monitor), AeTab(monitor)):
        qtbot.addWidget(tab)
        tab.show_subject(sid)
        assert not tab.add_button.isEnabled()
    dlg = AeDialog(monitor, sid)
    qtbot.addWidget(dlg)
    dlg.set_input(SAE)
    assert not dlg.ok_button.isEnabled()


def test_table_models_pass_the_model_tester(qtmodeltester, coord, sid):
    ae_svc.record_adverse_event(coord, sid, SAE)
    dose_svc.record_usual_day(coord, sid, date(2026, 11, 18), time(8),
                              "L1")
    dose_svc.record_dose(coord, sid, DoseInput(date="2026-11-19", missed=True,
                                               missed_reason="Forgot"))
    ae_model = AeTableModel()
    ae_model.set_rows(ae_svc.list_adverse_events(coord, sid))
    qtmodeltester.check(ae_model)
    dose_model = DoseTableModel()
    dose_model.set_rows(dose_svc.list_doses(coord, sid))
    qtmodeltester.check(dose_model)
    assert dose_model.rowCount() == 3 and dose_model.index(2, DoseTableModel.MISSED).data() \
        == "Missed: Forgot"
    empty = AeTableModel()
    qtmodeltester.check(empty)


def test_timeline_paints_and_renders_to_png(qtbot, coord, sid, tmp_path):
    dose_svc.record_usual_day(coord, sid, date(2026, 11, 18), time(8),
                              "L1")
    ae_svc.record_adverse_event(coord, sid, SAE)
    widget = CourseTimeline()
    qtbot.addWidget(widget)
    widget.set_timeline(reports.subject_timeline(coord, sid))
    widget.resize(800, widget.needed_height())
    widget.show()
    path = widget.render_png(tmp_path / "timeline.png")
    image = widget.render_image(800)
    colours = {image.pixelColor(x, y).name() for x in range(0, 800, 3)
               for y in range(0, image.height(), 3)}
    assert path.stat().st_size > 1000
    assert QColor(GREEN).name() in colours  # a full day of dosing
    assert "#b42318" in colours  # the SAE marker
    assert widget.grab().width() == 800
