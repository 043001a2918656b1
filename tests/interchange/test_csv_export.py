"""CSV export: a wide file per form (subject × visit), long files for repeating tables, the
subjects and the data dictionary."""

from __future__ import annotations

import csv
import sqlite3

import pytest

from crf_app.domain.errors import PermissionDenied
from crf_app.domain.forms.dictionary import dictionary_csv
from crf_app.domain.roles import Role
from crf_app.exports.csv_export import CsvCancelled
from crf_app.services.csv_service import export_csv
from crf_app.services.forms import form_library, save_form
from crf_app.services.subjects import list_subjects, subject_detail


def _rows(path):
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_one_wide_file_per_form_long_files_for_tables_and_the_dictionary(laptop_a, tmp_path):
    inv = laptop_a.inv
    subject = next(r for r in list_subjects(inv) if r.screening_number == "S03-003")
    scr = subject_detail(inv, subject.id).visits[0].id
    save_form(inv, scr, "conmeds", {"medications": [
        {"CMTRT": "Aspirin", "CMINDC": "Prevention", "CMROUTE": "PO", "CMSTDTC": "2025",
         "CMONGO": "Y"},
        {"CMTRT": "Metformin", "CMINDC": "Diabetes", "CMROUTE": "PO", "CMSTDTC": "2024-02",
         "CMONGO": "N", "CMENDTC": "2025-01"}]}, complete=True)
    summary = export_csv(laptop_a.dm, tmp_path / "csv")
    folder = tmp_path / "csv"
    lib = form_library(laptop_a.study)
    for form_id in lib.forms:
        assert (folder / f"{form_id}.csv").exists()
    vitals = _rows(folder / "vital_signs.csv")
    con = sqlite3.connect(laptop_a.path)
    saved = con.execute("select count(*) from form_instance where form_id = 'vital_signs'"
                        ).fetchone()[0]
    sysbp = dict(((sn, visit), value) for sn, visit, value in con.execute(
        "select s.screening_number, v.visit_code, i.value from item_value i join "
        "form_instance f on f.id = i.form_instance_id join visit v on v.id = f.visit_id join "
        "subject s on s.id = v.subject_id where f.form_id = 'vital_signs' and "
        "i.item_id = 'SYSBP'"))
    con.close()
    assert len(vitals) == saved == summary.rows["vital_signs"]
    assert list(vitals[0])[:6] == ["SITE", "SUBJECT", "VISIT", "VISIT_DATE", "FORM_VERSION",
                                   "FORM_STATUS"]
    assert {(r["SUBJECT"], r["VISIT"]): r["SYSBP"] for r in vitals} == sysbp
    assert "BMI" in vitals[0]
    meds = _rows(folder / "conmeds__medications.csv")
    assert [(m["SUBJECT"], m["ROW"], m["CMTRT"]) for m in meds] == [
        ("S03-003", "1", "Aspirin"), ("S03-003", "2", "Metformin")]
    assert meds[1]["CMENDTC"] == "2025-01"
    assert "CMTRT" not in _rows(folder / "conmeds.csv")[0]
    subjects = _rows(folder / "subjects.csv")
    assert len(subjects) == 6 and {s["SITE"] for s in subjects} == {"S01", "S02", "S03"}
    assert (folder / "data_dictionary.csv").read_text(encoding="utf-8") == dictionary_csv(lib)


def test_csv_export_needs_the_export_permission_and_cancel_removes_the_files(laptop_a,
                                                                           as_role, tmp_path):
    with pytest.raises(PermissionDenied):
        export_csv(as_role(Role.COORDINATOR), tmp_path / "no")
    with pytest.raises(CsvCancelled):
        export_csv(laptop_a.dm, tmp_path / "cancel", cancelled=lambda: True)
    assert list((tmp_path / "cancel").iterdir()) == []
