"""Filling, saving, reopening and correcting CRFs through the real widgets."""

from datetime import date

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from crf_app.domain.subjects import Enrollment
from crf_app.gui.form_dialog import FormDialog
from crf_app.gui.form_editors import ChoiceEditor, LineEditor
from crf_app.services import forms as fsvc
from crf_app.services import subjects as svc
from tests.conftest import fixed_clock


@pytest.fixture
def coord(coordinator):
    coordinator.clock = fixed_clock()
    return coordinator


@pytest.fixture
def scr_visit(coord):
    sid = svc.enroll_subject(coord, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                               date(2026, 11, 1), date(2026, 11, 1)))
    return sid, svc.subject_detail(coord, sid).visits[0].id


def type_into(qtbot, dlg, item_id, text):
    ed = dlg.renderer.editors[item_id]
    if isinstance(ed, ChoiceEditor):
        ed.combo.setFocus()
        qtbot.keyClicks(ed.combo, text)
    else:
        ed.edit.setFocus()
        ed.edit.selectAll()
        qtbot.keyClicks(ed.edit, text)


def open_dialog(qtbot, ctx, visit_id, form_id):
    dlg = FormDialog(ctx, visit_id, form_id)
    qtbot.addWidget(dlg)
    dlg.show()
    return dlg


def test_vital_signs_fill_save_reopen_correct(qtbot, coord, scr_visit):
    _sid, vid = scr_visit
    dlg = open_dialog(qtbot, coord, vid, "vital_signs")
    for item, text in [("VSTIM", "09:30"), ("SYSBP", "128"), ("DIABP", "82"), ("PULSE", "72"),
                       ("TEMP", "36.6"), ("WEIGHT", "80"), ("HEIGHT", "180")]:
        type_into(qtbot, dlg, item, text)
    assert dlg.renderer.editors["BMI"].value() == "24.7"  # computed live
    type_into(qtbot, dlg, "DIABP", "140")  # diastolic above systolic: cross-item check
    assert not dlg.renderer.result.ok
    assert dlg.renderer.messages["DIABP"].isVisible() or dlg.renderer.messages["SYSBP"].isVisible()
    type_into(qtbot, dlg, "DIABP", "82")
    dlg.complete_box.setChecked(True)
    qtbot.mouseClick(dlg.save_button, Qt.MouseButton.LeftButton)
    assert not dlg.dirty and "Complete" in dlg.status_label.text()

    again = open_dialog(qtbot, coord, vid, "vital_signs")
    assert again.renderer.editors["SYSBP"].value() == "128"
    assert again.renderer.editors["BMI"].value() == "24.7"
    type_into(qtbot, again, "PULSE", "70")
    asked = []
    again.ask_reason = lambda: asked.append(1) or "transcription error"
    assert again.save()
    assert asked == [1]
    assert fsvc.open_form(coord, vid, "vital_signs").raw["PULSE"] == "70"


def test_vital_signs_errors_shown_at_the_item_and_nothing_saved(qtbot, coord, scr_visit):
    _sid, vid = scr_visit
    dlg = open_dialog(qtbot, coord, vid, "vital_signs")
    type_into(qtbot, dlg, "SYSBP", "4oo")
    msg = dlg.renderer.messages["SYSBP"]
    assert msg.isVisible() and "Systolic BP" in msg.text()
    assert not dlg.save()
    assert "Not saved" in dlg.error.text()
    assert fsvc.open_form(coord, vid, "vital_signs").row_version == 0


def test_nihss_total_and_save(qtbot, coord, scr_visit):
    _sid, vid = scr_visit
    dlg = open_dialog(qtbot, coord, vid, "nihss")
    scores = {"NIH1A": "1", "NIH1B": "2", "NIH1C": "0", "NIH2": "1", "NIH3": "2", "NIH4": "1",
              "NIH5A": "3", "NIH5B": "0", "NIH6A": "2", "NIH6B": "0", "NIH7": "1", "NIH8": "1",
              "NIH9": "2", "NIH10": "1", "NIH11": "0"}
    for item, text in scores.items():
        assert dlg.renderer.editors["NIHTOT"].value() == ""  # total only when all scored
        type_into(qtbot, dlg, item, text)
    assert dlg.renderer.editors["NIHTOT"].value() == "17"
    type_into(qtbot, dlg, "NIH1A", "4")  # 1a ranges 0–3
    assert "above the maximum" in dlg.renderer.messages["NIH1A"].text()
    type_into(qtbot, dlg, "NIH1A", "1")
    dlg.complete_box.setChecked(True)
    assert dlg.save()
    assert fsvc.open_form(coord, vid, "nihss").raw["NIHTOT"] == "17"


def test_eligibility_branching_and_screen_failure(qtbot, coord, scr_visit):
    sid, vid = scr_visit
    dlg = open_dialog(qtbot, coord, vid, "eligibility")
    preg_row = dlg.renderer.editors["EX_PREG"].parentWidget()
    assert not preg_row.isVisible()  # shown only for women
    for item in ["IE_AGE", "IE_STROKE", "IE_ONSET", "IE_NIHSS", "IE_CONSENT"]:
        type_into(qtbot, dlg, item, "Y")
    type_into(qtbot, dlg, "SEX", "F")
    assert preg_row.isVisible()
    for item in ["EX_PREG", "EX_LACT", "EX_ENDO", "EX_PSYCH", "EX_MALIG"]:
        type_into(qtbot, dlg, item, "N")
    type_into(qtbot, dlg, "EX_ANX", "Y")
    assert dlg.renderer.result.computed["ELIGIBLE"] == "N"
    dlg.complete_box.setChecked(True)
    assert dlg.save()
    assert "screen failure" in dlg.status_label.text()
    assert svc.subject_detail(coord, sid).status == "screen_failed"
    # correcting the answer later needs a reason
    again = open_dialog(qtbot, coord, vid, "eligibility")
    assert isinstance(again.renderer.editors["EX_ANX"], ChoiceEditor)
    again.renderer.editors["EX_ANX"].set_value("N")
    again.ask_reason = lambda: "source document re-checked"
    assert again.save()
    assert fsvc.open_form(coord, vid, "eligibility").raw["ELIGIBLE"] == "Y"


def test_unsaved_changes_are_guarded(qtbot, coord, scr_visit, monkeypatch):
    _sid, vid = scr_visit
    dlg = open_dialog(qtbot, coord, vid, "vital_signs")
    type_into(qtbot, dlg, "SYSBP", "120")
    monkeypatch.setattr(FormDialog, "confirm_discard",
                        lambda self: QMessageBox.StandardButton.Cancel)
    dlg.close()
    assert dlg.isVisible() and dlg.dirty
    monkeypatch.setattr(FormDialog, "confirm_discard",
                        lambda self: QMessageBox.StandardButton.Discard)
    dlg.close()
    assert not dlg.isVisible()
    assert fsvc.open_form(coord, vid, "vital_signs").row_version == 0


def test_every_form_of_the_set_opens_and_tab_order_reaches_each_editable_item(qtbot, coord,
                                                                              scr_visit, study):
    sid, _vid = scr_visit
    matrix = fsvc.form_matrix(coord, sid)
    seen = set()
    for (visit_id, form_id) in matrix.cells:
        if form_id in seen:
            continue
        seen.add(form_id)
        dlg = open_dialog(qtbot, coord, visit_id, form_id)
        editable = [ed for ed in dlg.renderer.editors.values()
                    if not (isinstance(ed, LineEditor) and ed.item.is_computed)]
        if not editable:  # a form that is one repeating table (concomitant medications)
            assert dlg.renderer.tables
            table = next(iter(dlg.renderer.tables.values()))
            table.add_button.click()
            assert len(table.rows) == 1
            editable = list(table.rows[0].values())
        first = editable[0].focus_widget()
        first.setFocus()
        chain, w = [], first
        for _ in range(200):
            chain.append(w)
            w = w.nextInFocusChain()
            if w is first:
                break
        for ed in editable:
            if ed.isVisibleTo(dlg) and ed.item.type != "multi_choice" \
                    and not ed.item.is_computed:
                assert ed.focus_widget() in chain, (form_id, ed.item.id)
        dlg.dirty = False
        dlg.close()
    assert seen == {"eligibility", "demographics", "medical_history", "vital_signs", "labs",
                    "nihss", "mrs", "moca", "conmeds", "ham_a", "bdi_ii", "end_of_study"}
