"""Validating what a user typed: bad inputs, soft limits, show_if, rows, encodings."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

import pytest

from crf_app.domain.forms import (
    FormDef,
    decode_value,
    display_value,
    load_form_library,
    validate_form,
    validate_item,
)
from crf_app.paths import FORMS_DIR

LIB = load_form_library(FORMS_DIR)
VS = LIB.get("vital_signs")
GOOD_VS = {"VSTIM": "08:30", "SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.8",
           "WEIGHT": "74.2", "HEIGHT": "172"}


def _only_error(result, item_id, rule, *words):
    assert [(e.item_id, e.rule) for e in result.errors] == [(item_id, rule)], result.errors
    message = result.errors[0].message
    for word in words:
        assert word in message, message
    return message


def test_a_good_entry_is_ok_with_canonical_values():
    result = validate_form(VS, GOOD_VS, complete=True)
    assert result.ok and not result.warnings
    assert result.values == {**GOOD_VS, "BMI": "25.1"}


@pytest.mark.parametrize(("item", "typed", "rule", "words"), [
    ("SYSBP", "12O", "not_a_number", ["Systolic BP", "'12O'", "not a whole number"]),
    ("PULSE", "abc", "not_a_number", ["Heart rate", "not a whole number"]),
    ("TEMP", "thirty", "not_a_number", ["Temperature", "not a number"]),
    ("TEMP", "37,5", "not_a_number", ["Temperature", "point", "not 37,5"]),
    ("SYSBP", "400", "hard_max", ["Systolic BP: 400 is above the maximum 300 mmHg"]),
    ("SYSBP", "39", "hard_min", ["Systolic BP: 39 is below the minimum 40 mmHg"]),
    ("TEMP", "45.1", "hard_max", ["Temperature", "maximum 45.0 °C"]),
    ("WEIGHT", "74.25", "too_many_decimals", ["Weight", "more than 1 decimal place"]),
    ("SYSBP", "120.5", "too_many_decimals", ["Systolic BP", "whole number"]),
    ("VSTIM", "25:00", "bad_time", ["Time of measurement", "25:00", "00:00 to 23:59"]),
    ("VSTIM", "12:60", "bad_time", ["Time of measurement"]),
    ("VSTIM", "noon", "bad_time", ["Time of measurement", "HH:MM"]),
])
def test_bad_input_gives_an_error_on_the_right_item(item, typed, rule, words):
    result = validate_form(VS, {**GOOD_VS, item: typed})
    _only_error(result, item, rule, *words)
    assert item not in result.values
    assert not result.ok


def test_impossible_date_is_refused():
    result = validate_form(LIB.get("labs"), {"LBDAT": "2026-02-30", "LBFAST": "Y"})
    _only_error(result, "LBDAT", "bad_date", "Collection date", "2026-02-30",
                "not a real calendar date")
    leap = validate_form(LIB.get("labs"), {"LBDAT": "2028-02-29"})
    assert leap.values["LBDAT"] == "2028-02-29"
    for typed in ("2026-2-3", "03/02/2026", "20260203", "2026-W05-1"):
        assert validate_form(LIB.get("labs"), {"LBDAT": typed}).errors[0].rule == "bad_date"


def test_a_code_not_in_the_codelist_is_refused():
    result = validate_form(LIB.get("demographics"), {"SEX": "X"})
    _only_error(result, "SEX", "not_in_codelist", "Sex", "'X'", "F, M")
    mrs = validate_form(LIB.get("mrs"), {"MRS": "7"})
    _only_error(mrs, "MRS", "not_in_codelist", "mRS score")
    assert validate_form(LIB.get("mrs"), {"MRS": "3"}).values == {"MRS": "3"}


def test_required_items_left_empty_on_completion():
    result = validate_form(VS, {**GOOD_VS, "PULSE": "  "}, complete=True)
    _only_error(result, "PULSE", "required", "Heart rate", "required")
    draft = validate_form(VS, {**GOOD_VS, "PULSE": ""}, complete=False)
    assert draft.ok and "PULSE" not in draft.values
    empty = validate_form(VS, {}, complete=True)
    assert {e.item_id for e in empty.errors} == {"SYSBP", "DIABP", "PULSE", "TEMP", "WEIGHT",
                                                 "HEIGHT"}


def test_text_longer_than_max_length():
    form = LIB.get("end_of_study")
    result = validate_form(form, {"EOSSTAT": "WITHDRAWN", "EOSREAS": "x" * 501})
    _only_error(result, "EOSREAS", "max_length", "Reason for not completing", "501", "500")


def test_soft_limit_gives_a_warning_and_keeps_the_value():
    result = validate_form(VS, {**GOOD_VS, "SYSBP": "195"})
    assert result.ok
    assert [(w.item_id, w.rule) for w in result.warnings] == [("SYSBP", "soft_max")]
    assert "Systolic BP: 195 mmHg is above the expected maximum 180 mmHg" in \
        result.warnings[0].message
    assert result.values["SYSBP"] == "195"
    low = validate_form(VS, {**GOOD_VS, "TEMP": "35.0"})
    assert [(w.item_id, w.rule) for w in low.warnings] == [("TEMP", "soft_min")]


def test_lab_reference_range_flags_with_its_wording():
    result = validate_form(LIB.get("labs"), {"CRP": "12", "HDL": "0.8", "GLUC": "5.2"})
    assert result.ok
    messages = {w.item_id: w.message for w in result.warnings}
    assert messages["CRP"] == "C-reactive protein: 12.0 mg/L is above the reference range " \
                              "(≤ 5.0 mg/L)"
    assert messages["HDL"] == "HDL cholesterol: 0.80 mmol/L is below the reference range " \
                              "(≥ 1.00 mmol/L)"
    assert "GLUC" not in messages
    assert result.values["CRP"] == "12.0"


def test_cross_item_check_is_an_error_on_the_items_it_concerns():
    result = validate_form(VS, {**GOOD_VS, "SYSBP": "100", "DIABP": "100"})
    _only_error(result, "DIABP", "DIABP_LT_SYSBP", "Diastolic BP", "lower than the systolic")
    assert result.errors[0].items == ("DIABP", "SYSBP")
    assert result.issues_for("SYSBP") == result.errors
    # not evaluated while one of them is empty or invalid
    assert validate_form(VS, {**GOOD_VS, "SYSBP": ""}).ok
    assert [e.rule for e in validate_form(VS, {**GOOD_VS, "SYSBP": "x"}).errors] == [
        "not_a_number"]


def test_soft_checks_are_warnings():
    result = validate_form(LIB.get("labs"), {"CHOL": "4.00", "LDL": "3.00", "HDL": "1.50"})
    assert result.ok
    assert [(w.item_id, w.rule) for w in result.warnings] == [("LDL", "LIPIDS_SUM")]


def test_show_if_hides_drops_and_never_requires():
    form = LIB.get("end_of_study")
    done = validate_form(form, {"EOSSTAT": "COMPLETED", "EOSDAT": "2026-05-01",
                                "EOSREAS": "typed before changing the status"}, complete=True)
    assert done.ok
    assert done.hidden == {"EOSREAS"} and done.is_hidden("EOSREAS")
    assert "EOSREAS" not in done.values
    withdrawn = validate_form(form, {"EOSSTAT": "WITHDRAWN", "EOSDAT": "2026-05-01"},
                              complete=True)
    _only_error(withdrawn, "EOSREAS", "required", "Reason for not completing")
    assert withdrawn.hidden == set()


def test_a_hidden_item_is_not_validated():
    result = validate_form(LIB.get("eligibility"), {"SEX": "M", "EX_PREG": "maybe"})
    assert result.ok and "EX_PREG" in result.hidden
    shown = validate_form(LIB.get("eligibility"), {"SEX": "F", "EX_PREG": "maybe"})
    _only_error(shown, "EX_PREG", "not_in_codelist", "Pregnancy")


def test_unknown_keys_are_reported():
    result = validate_form(VS, {**GOOD_VS, "SYSBPX": "120"})
    _only_error(result, "SYSBPX", "unknown_item", "vital_signs")


def test_repeating_rows_validated_row_by_row():
    form = LIB.get("conmeds")
    rows = [
        {"CMTRT": "Aspirin", "CMINDC": "Secondary prevention", "CMDOSE": "100",
         "CMDOSU": "MG", "CMROUTE": "PO", "CMDOSFRQ": "QD", "CMSTDTC": "2025-11",
         "CMONGO": "Y", "CMENDTC": "2026-01-01"},
        {"CMTRT": "", "CMINDC": None},  # blank row: skipped
        {"CMTRT": "Amlodipine", "CMINDC": "Hypertension", "CMDOSE": "5", "CMROUTE": "XX",
         "CMSTDTC": "2024", "CMONGO": "N"},
    ]
    result = validate_form(form, {"medications": rows}, complete=True)
    assert result.values["medications"][0] == {
        "CMTRT": "Aspirin", "CMINDC": "Secondary prevention", "CMDOSE": "100.000",
        "CMDOSU": "MG", "CMROUTE": "PO", "CMDOSFRQ": "QD", "CMSTDTC": "2025-11",
        "CMONGO": "Y"}
    assert result.values["medications"][1] == {}
    assert result.is_hidden("CMENDTC", 0) and not result.is_hidden("CMENDTC", 2)
    assert sorted((e.item_id, e.row, e.rule) for e in result.errors) == [
        ("CMDOSU", 2, "CMDOSU_WITH_DOSE"), ("CMENDTC", 2, "required"),
        ("CMROUTE", 2, "not_in_codelist")]
    assert result.value("CMTRT", 2, "medications") == "Amlodipine"


def test_too_many_rows():
    form = LIB.get("medical_history")
    rows = [{"MHTERM": f"Condition {i}", "MHONGO": "Y"} for i in range(41)]
    result = validate_form(form, {"conditions": rows})
    _only_error(result, "conditions", "max_rows", "41", "40")


def test_a_row_that_is_not_a_mapping_is_an_error_not_a_crash():
    result = validate_form(LIB.get("medical_history"), {"conditions": ["oops", 3]})
    assert [(e.item_id, e.row, e.rule) for e in result.errors] == [
        ("conditions", 0, "bad_value"), ("conditions", 1, "bad_value")]
    assert validate_form(LIB.get("medical_history"), {"conditions": "x"}).errors[0].rule == \
        "bad_value"


def test_partial_dates():
    form = LIB.get("medical_history")
    row = {"MHTERM": "Gout", "MHONGO": "N"}
    for typed, expected in (("2019", "2019"), ("2019-07", "2019-07"),
                            ("2019-07-04", "2019-07-04")):
        result = validate_form(form, {"conditions": [{**row, "MHSTDTC": typed}]})
        assert result.values["conditions"][0]["MHSTDTC"] == expected
    for typed in ("2019-13", "2019-02-30", "19", "2019-7", "0999"):
        result = validate_form(form, {"conditions": [{**row, "MHENDTC": typed}]})
        assert [(e.item_id, e.row, e.rule) for e in result.errors] == [
            ("MHENDTC", 0, "bad_date")], typed


def test_multi_choice_codes_are_sorted_in_codelist_order():
    form = LIB.get("demographics")
    result = validate_form(form, {"RACE": ["WHITE", "ASIAN", "WHITE"]})
    assert result.values["RACE"] == "ASIAN|WHITE"
    assert result.hidden == {"RACEOTH"}
    other = validate_form(form, {"RACE": "OTHER|BLACK", "RACEOTH": "  Mixed  "},
                          complete=False)
    assert other.values["RACE"] == "BLACK|OTHER" and other.values["RACEOTH"] == "Mixed"
    bad = validate_form(form, {"RACE": ["WHITE", "MARTIAN"]})
    _only_error(bad, "RACE", "not_in_codelist", "Race", "'MARTIAN'")


def test_yes_no_and_choice_input_leniency():
    form = LIB.get("eligibility")
    result = validate_form(form, {"IE_AGE": "yes", "IE_STROKE": "n", "SEX": "f"})
    assert {k: result.values[k] for k in ("IE_AGE", "IE_STROKE", "SEX")} == {
        "IE_AGE": "Y", "IE_STROKE": "N", "SEX": "F"}
    assert validate_form(form, {"IE_AGE": "maybe"}).errors[0].rule == "not_in_codelist"


def test_validate_item_for_live_checking():
    sysbp = VS.item("SYSBP")
    assert validate_item(sysbp, " 120 ").value == "120"
    r = validate_item(sysbp, "400")
    assert not r.ok and r.errors[0].rule == "hard_max" and r.value is None
    assert validate_item(sysbp, "").ok
    assert validate_item(sysbp, "", required=True).errors[0].rule == "required"
    assert validate_item(sysbp, "190").warnings[0].rule == "soft_max"
    assert validate_item(VS.item("BMI"), "12").value is None
    assert validate_item(VS.item("TEMP"), "37.50").value == "37.5"
    assert validate_item(VS.item("TEMP"), "-0.0").errors[0].rule == "hard_min"


@pytest.mark.parametrize(("form", "item", "canonical", "typed", "shown"), [
    ("vital_signs", "SYSBP", "120", 120, "120 mmHg"),
    ("vital_signs", "TEMP", "37.5", Decimal("37.5"), "37.5 °C"),
    ("vital_signs", "VSTIM", "08:30", time(8, 30), "08:30"),
    ("labs", "LBDAT", "2026-03-14", date(2026, 3, 14), "2026-03-14"),
    ("labs", "LBFAST", "Y", True, "Yes"),
    ("labs", "LBFAST", "N", False, "No"),
    ("medical_history", "MHSTDTC", "2025-03", "2025-03", "2025-03"),
    ("demographics", "SEX", "F", "F", "Female"),
    ("demographics", "RACE", "ASIAN|WHITE", ["ASIAN", "WHITE"], "Asian; White"),
    ("mrs", "MRS", "2", "2", "2 – Slight disability; looks after own affairs without help"),
    ("end_of_study", "EOSREAS", "Moved away", "Moved away", "Moved away"),
])
def test_decode_and_display(form, item, canonical, typed, shown):
    it = LIB.get(form).item(item)
    assert decode_value(it, canonical) == typed
    assert display_value(it, canonical) == shown
    assert decode_value(it, "") is None and display_value(it, "") == ""


def test_datetime_items():
    form = FormDef.from_dict({"id": "x", "version": 1, "title": "X", "sections": [
        {"id": "s", "title": "S", "items": [
            {"id": "ONSET", "label": "Stroke onset", "type": "datetime"},
            {"id": "ARRIVAL", "label": "Arrival", "type": "datetime"}]}],
        "checks": [{"id": "ARRIVAL_AFTER_ONSET", "expression": "ARRIVAL >= ONSET",
                    "message": "must not be before the onset"}]})
    result = validate_form(form, {"ONSET": "2026-01-05 7:05", "ARRIVAL": "2026-01-05T06:00"})
    assert result.values == {"ONSET": "2026-01-05T07:05", "ARRIVAL": "2026-01-05T06:00"}
    assert [(e.item_id, e.rule) for e in result.errors] == [("ARRIVAL", "ARRIVAL_AFTER_ONSET")]
    it = form.item("ONSET")
    assert decode_value(it, "2026-01-05T07:05") == datetime(2026, 1, 5, 7, 5)
    assert display_value(it, "2026-01-05T07:05") == "2026-01-05 07:05"
    bad = validate_form(form, {"ONSET": "2026-01-05T24:00"})
    assert bad.errors[0].rule == "bad_datetime"
    with pytest.raises(ValueError, match="Stroke onset"):
        decode_value(it, "yesterday")


def test_issue_helpers():
    result = validate_form(VS, {**GOOD_VS, "SYSBP": "x"})
    issue = result.errors[0]
    assert str(issue) == "SYSBP: Systolic BP: 'x' is not a whole number"
    fe = issue.as_field_error()
    assert (fe.field, fe.rule) == ("SYSBP", "not_a_number")


def test_dependents_for_the_gui():
    assert VS.dependents("WEIGHT") == {"BMI"}
    assert LIB.get("eligibility").dependents("SEX") == {"EX_PREG", "EX_LACT", "ELIGIBLE"}
    assert VS.dependents("BMI") == frozenset()


def test_a_forty_item_form_validates_in_well_under_5_ms():
    import time as clock

    form = LIB.get("bdi_ii")
    raw = {f"BDI{n:02d}": str(n % 4) for n in range(1, 22)}
    form2 = LIB.get("nihss")
    raw2 = {i.id: "1" for i in form2.items if not i.is_computed}
    validate_form(form, raw)
    start = clock.perf_counter()
    for _ in range(100):
        validate_form(form, raw, complete=True)
        validate_form(form2, raw2, complete=True)
    per_pair = (clock.perf_counter() - start) / 100  # 38 items
    assert per_pair < 0.005, per_pair
