"""Real exports of other EDC systems (OpenClinica 3, REDCap 9) become new crf-app studies, with
a report of everything that could not be mapped; strict mode refuses unknown items."""

from __future__ import annotations

import sqlite3

import pytest

from crf_app.domain.roles import Role
from crf_app.integrity import verify_audit
from crf_app.services.context import open_new_database
from crf_app.services.odm_import import ImportRefused, import_new_study
from crf_app.services.setup import NewUser
from tests.interchange.odm_helpers import PASSWORD, counts, edit

ADMIN = NewUser("admin", "Ada Admin", Role.ADMIN, PASSWORD)


@pytest.fixture
def new_db(tmp_path):
    made = []

    def _make(name="new"):
        db = open_new_database(f"sqlite:///{tmp_path / name}.db")
        made.append(db)
        return db

    yield _make
    for db in made:
        db.dispose()


def _value(path, subject, visit, form, item, row=0):
    con = sqlite3.connect(path)
    try:
        found = con.execute(
            "select i.value from item_value i join form_instance f on f.id = "
            "i.form_instance_id join visit v on v.id = f.visit_id join subject s on "
            "s.id = v.subject_id where s.screening_number = ? and v.visit_code = ? and "
            "f.form_id = ? and i.item_id = ? and i.row_index = ?",
            (subject, visit, form, item, row)).fetchone()
        return found[0] if found else None
    finally:
        con.close()


def test_openclinica_full_extract_becomes_a_new_study(samples, new_db):
    db = new_db()
    study, report = import_new_study(
        db, samples / "openclinica" / "JUNO_DEMO_odm1.3_fullExtract.xml", admin=ADMIN)
    try:
        assert study.oid == "S_THEJUNOD" and study.title == "The JUNO Diabetes Study"
        assert report.subjects_added == 22 and report.values_added > 3800
        assert {s.code for s in study.protocol.sites} == {"S_101", "S_102", "S_103", "S_104",
                                                          "S_105"}
        visits = [v.code for v in study.protocol.visits]
        assert visits[:3] == ["SE_INITIALVISIT", "SE_1WEEKFU", "SE_2WEEKFU"]
        assert {"SE_MONTHLYFU", "SE_MONTHLYFU-2", "SE_MONTHLYFU-3"} <= set(visits)
        assert "f_demographics_v20" in study.forms["forms"]
        path = study.db.path
        assert _value(path, "SS_101001", "SE_INITIALVISIT", "f_demographics_v20",
                      "DEM_EDU") == "3"
        assert _value(path, "SS_101001", "SE_INITIALVISIT", "f_demographics_v20",
                      "DEM_AGE") == "35 Years"
        con = sqlite3.connect(path)
        initials, site = con.execute(
            "select initials, si.code from subject s join site si on si.id = s.site_id "
            "where screening_number = 'SS_101001'").fetchone()
        con.close()
        assert (initials, site) == ("XX", "S_101")
        text = report.text()
        assert "http://www.openclinica.org/ns/odm_ext_v130/v3.1" in text  # ignored, but said
        assert "placeholders XX, 1900" in text
        assert "repeating study event SE_MONTHLYFU" in text
        assert any("hard limits" in n and "soft" in n for n in report.notes)
        assert verify_audit(study.db).ok
    finally:
        study.close()


@pytest.mark.parametrize("name", ["basic-demography", "repeating-events", "visits"])
def test_redcap_project_xml_becomes_a_new_study(samples, new_db, name):
    from lxml import etree

    source = samples / "redcap" / f"{name}.xml"
    study, report = import_new_study(new_db(name), source, admin=ADMIN)
    try:
        ns = {"o": "http://www.cdisc.org/ns/odm/v1.3"}
        forms = etree.parse(str(source)).findall(".//o:FormDef", ns)
        assert len(study.forms["forms"]) == len(forms)
        assert report.subjects_added == 0  # the project XML holds no records
        assert "https://projectredcap.org" in report.text()
        assert any("placeholder regimen" in n for n in report.notes)
        assert study.protocol.visits
    finally:
        study.close()


def test_strict_mode_refuses_unknown_items_and_the_default_reports_them(samples, new_db,
                                                                       tmp_path):
    source = samples / "openclinica" / "JUNO_DEMO_odm1.3_fullExtract.xml"
    odd = edit(source, tmp_path / "odd.xml", 'ItemData ItemOID="I_DEMOG_DEM_EDU"',
               'ItemData ItemOID="I_DEMOG_SHOE_SIZE"')
    strict_db = new_db("strict")
    with pytest.raises(ImportRefused, match="I_DEMOG_SHOE_SIZE"):
        import_new_study(strict_db, odd, admin=ADMIN, strict=True)
    assert counts(tmp_path / "strict.db")["study"] == 0
    study, report = import_new_study(new_db("lenient"), odd, admin=ADMIN)
    try:
        assert report.subjects_added == 22
        assert any("I_DEMOG_SHOE_SIZE" in line for line in report.not_imported)
        assert "Not imported" in report.text()
    finally:
        study.close()


def test_a_new_study_needs_an_empty_database(samples, laptop_a):
    from crf_app.services.setup import StudyExists

    with pytest.raises(StudyExists):
        import_new_study(laptop_a.study.db, samples / "redcap" / "visits.xml", admin=ADMIN)
