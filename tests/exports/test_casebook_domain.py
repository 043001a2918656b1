"""The casebook as plain data: flags, not-applicable items, the digest, the two logs."""

import dataclasses
import json
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

import pytest

from crf_app.domain.adverse_events import AdverseEvent
from crf_app.domain.casebook import (
    Casebook,
    StudyInfo,
    SubjectInfo,
    VisitRecord,
    ae_row,
    casebook_digest,
    casebook_json,
    compliance_text,
    dose_row,
    form_record,
    item_record,
    range_flag,
)
from crf_app.domain.dosing import DoseRecord
from crf_app.domain.forms import load_form_library
from crf_app.domain.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lib():
    return load_form_library(ROOT / "forms")


def test_soft_and_hard_limits_flag_values(lib):
    vitals, labs = lib.get("vital_signs"), lib.get("labs")
    assert range_flag(vitals.item("SYSBP"), "188") == (
        "high", "above the expected maximum 180 mmHg")
    assert range_flag(vitals.item("SYSBP"), "85") == ("low", "below the expected minimum 90 mmHg")
    assert range_flag(vitals.item("SYSBP"), "120") == ("", "")
    assert range_flag(vitals.item("SYSBP"), "400") == ("above_max", "above the maximum 300 mmHg")
    assert range_flag(labs.item("TNFA"), "12.5") == (
        "high", "above the reference range (≤ 8.1 pg/mL)")
    assert range_flag(labs.item("HDL"), "0.80")[0] == "low"
    assert range_flag(labs.item("LBFAST"), "Y") == ("", "")


def test_item_record_shows_labels_units_and_not_applicable(lib):
    demo = lib.get("demographics")
    race = item_record(demo.item("RACE"), "WHITE|OTHER")
    assert (race.value, race.code, race.text) == ("White; Other", "WHITE|OTHER", "White; Other")
    edu = item_record(demo.item("EDUYRS"), "12")
    assert (edu.value, edu.unit, edu.text, edu.flag) == ("12", "years", "12 years", "")
    hidden = item_record(demo.item("RACEOTH"), None, hidden=True, queries=[3])
    assert hidden.not_applicable and hidden.text == "" and hidden.queries == (3,)


def test_form_record_evaluates_branching_in_plain_and_repeating_sections(lib):
    elig = form_record(lib.get("eligibility"), {"SEX": "M", "EX_PREG": "", "ELIGIBLE": "N"},
                       status="Complete")
    items = {i.item_id: i for s in elig.sections for i in s.items}
    assert items["EX_PREG"].not_applicable and items["EX_LACT"].not_applicable
    assert not items["SEX"].not_applicable and items["SEX"].value == "Male"
    assert items["ELIGIBLE"].computed
    conmeds = form_record(lib.get("conmeds"), {"medications": [
        {"CMTRT": "A", "CMONGO": "Y"}, {"CMTRT": "B", "CMONGO": "N", "CMENDTC": "2026"}]},
        status="Complete", queries={("CMTRT", 1): [7]})
    section = conmeds.sections[0]
    ids = [c.item_id for c in section.columns]
    assert section.repeating and ids[0] == "CMTRT"
    end = ids.index("CMENDTC")
    assert section.rows[0][end].not_applicable
    assert section.rows[1][end].value == "2026" and not section.rows[1][end].not_applicable
    assert section.rows[1][0].queries == (7,)


def _casebook(**changes) -> Casebook:
    base = Casebook(
        study=StudyInfo("ST", "Study", "P-1", "1.0"),
        subject=SubjectInfo("S01-001", "ABC", "F", 1960, "S01", "Site one", "NSX", "Drug",
                            "On study"),
        generated_at=datetime(2026, 11, 24, 10, tzinfo=UTC), generated_by="Mon",
        app_version="0.1.0", visits=(VisitRecord("SCR", "Screening", 0),))
    return dataclasses.replace(base, **changes)


def test_digest_covers_the_data_not_the_generation_stamp():
    a = _casebook()
    later = _casebook(generated_at=datetime(2027, 1, 1, tzinfo=UTC), generated_by="Other")
    changed = _casebook(visits=(VisitRecord("SCR", "Screening", 0, deviation="late"),))
    assert casebook_digest(a) == casebook_digest(later)
    assert casebook_digest(a) != casebook_digest(changed)
    assert len(casebook_digest(a)) == 64
    data = json.loads(casebook_json(a))
    assert "generated_at" not in data and data["subject"]["screening_number"] == "S01-001"


def test_adverse_event_and_dose_rows_use_labels_and_compliance_is_per_course():
    ae = AdverseEvent("HEADACHE", "", "NOT_APPLICABLE", date(2026, 10, 6), time(8, 30), None,
                      True, "MILD", 1, False, (), "POSSIBLE", "NONE", "RECOVERING", "")
    row = ae_row(1, ae)
    assert (row.term, row.relationship, row.action, row.outcome) == (
        "Headache", "Possibly related", "Dose not changed", "Recovering/resolving")
    records = [DoseRecord(date(2026, 10, day), time(9), Decimal("0.2"), 2, "BOTH",
                          "INTRANASAL", "L1", "SELF") for day in (5, 6, 7, 9, 10, 11)]
    records.append(DoseRecord(date(2026, 10, 8), None, None, 0, "", "", "", "", True, "Forgot"))
    dose = dose_row(records[0])
    assert (dose.dose_mg, dose.total_mg, dose.nostril) == ("0.2", "0.4", "Both nostrils")
    assert dose_row(records[-1]).missed_reason == "Forgot"
    protocol = load_protocol(ROOT / "forms" / "study.yaml")
    text = compliance_text(records, protocol.regimen("stroke-tbi"))
    assert text.startswith("Course 1 (2026-10-05 to 2026-10-11): 12 of 14 planned "
                           "instillations given (85.7 %)")
    assert "1 missed-dose record(s)" in text
    assert compliance_text([], protocol.regimen("stroke-tbi")) == "No dosing recorded."
