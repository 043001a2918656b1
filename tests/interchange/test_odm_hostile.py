"""Hostile or broken files are refused with a plain message, and nothing at all is imported."""

from __future__ import annotations

import re

import pytest

from crf_app.domain.roles import Role
from crf_app.services.odm_export import export_odm
from crf_app.services.odm_import import ImportRefused, import_new_study, import_odm
from crf_app.services.setup import NewUser
from tests.interchange.odm_helpers import PASSWORD, counts, dump

BOMB = """<?xml version="1.0"?>
<!DOCTYPE ODM [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
 <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
]>
<ODM xmlns="http://www.cdisc.org/ns/odm/v1.3" FileOID="&g;" FileType="Transactional"
     CreationDateTime="2026-01-01T00:00:00" SourceSystem="crf-app"><Study OID="&g;"/></ODM>
"""
XXE = """<?xml version="1.0"?>
<!-- harmless-looking comment first -->
<!DOCTYPE ODM [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<ODM xmlns="http://www.cdisc.org/ns/odm/v1.3" FileOID="F" FileType="Transactional"
     CreationDateTime="2026-01-01T00:00:00" SourceSystem="crf-app">&secret;</ODM>
"""


@pytest.fixture
def target(laptop_a, laptops, tmp_path):
    """Laptop B holding one imported file; `valid` is laptop A's next (valid) file."""
    export_odm(laptop_a.dm, tmp_path / "x1.xml")
    b = laptops("b")
    import_odm(b.dm, tmp_path / "x1.xml")
    from datetime import date, timedelta

    from crf_app.domain.adverse_events import AeInput
    from crf_app.domain.subjects import Enrollment
    from crf_app.services.adverse_events import record_adverse_event
    from crf_app.services.subjects import enroll_subject
    from tests.interchange.odm_helpers import subject_id

    today = date.today()
    enroll_subject(laptop_a.inv, Enrollment("S02-077", "S02", "ABC", 1966, "M", "PBO",
                                            today - timedelta(days=1), today))
    record_adverse_event(laptop_a.inv, subject_id(laptop_a.inv, "S02-005"), AeInput(
        term="HEADACHE", location="NOT_APPLICABLE", start_date=today.isoformat(), ongoing=True,
        severity="MILD", grade="1", serious="N", relationship="UNLIKELY", action="NONE",
        outcome="RECOVERING"))
    export_odm(laptop_a.dm, tmp_path / "x2.xml")
    return b, (tmp_path / "x2.xml").read_text(encoding="utf-8")


def _in_data(text: str, old: str, new: str) -> bytes:
    """Replace the first `old` inside ClinicalData (not in the metadata)."""
    head, sep, data = text.partition("<ClinicalData")
    assert old in data, old
    return (head + sep + data.replace(old, new, 1)).encode()


def _mutate(text: str, case: str) -> bytes:
    if case == "not XML":
        return b"SUBJECT,VISIT,SYSBP\nS01-001,SCR,120\n"
    if case == "empty":
        return b""
    if case == "XML that is not ODM":
        return b"<?xml version='1.0'?><html><body><p>ODM</p></body></html>"
    if case == "ODM for another study":
        return text.replace('OID="NASEMAX-PSR-01"', 'OID="OTHER-TRIAL"').replace(
            'StudyOID="NASEMAX-PSR-01"', 'StudyOID="OTHER-TRIAL"').encode()
    if case == "truncated":
        data = text.encode()
        return data[: int(len(data) * 0.8)]
    if case == "broken in the middle":
        return text.replace("</SubjectData>", "</SubjectDat>", 1).encode()
    if case == "unknown ItemOID":
        return _in_data(text, 'ItemOID="I.CRFAPP.INITIALS"', 'ItemOID="I.CRFAPP.NICKNAME"')
    if case == "unknown form":
        return _in_data(text, 'FormOID="F.CRFAPP.SUBJECT"', 'FormOID="F.secret_form"')
    if case == "value of the wrong type":
        return re.sub(r'(ItemOID="I\.CRFAPP\.BRTHYR" Value=")\d+', r"\g<1>nineteen sixty",
                      text, count=1).encode()
    if case == "unknown adverse-event term":
        return _in_data(text, 'Value="HEADACHE"', 'Value="ZOMBIE_BITE"')
    if case == "dose that is not a number":
        return re.sub(r'(ItemOID="I\.CRFAPP\.EXDOSE" Value=")[^"]+', r"\g<1>lots", text,
                      count=1).encode()
    if case == "log record without a key":
        return re.sub(r'(ItemGroupOID="IG\.CRFAPP\.AE") ItemGroupRepeatKey="[^"]+"', r"\1",
                      text, count=1).encode()
    if case == "adverse events inside a visit":
        head, sep, data = text.partition("<ClinicalData")
        data = data.replace('FormOID="F.CRFAPP.VISIT"', 'FormOID="F.CRFAPP.AE"', 1)
        return (head + sep + data).encode()
    if case == "billion laughs":
        return BOMB.encode()
    if case == "external entity":
        return XXE.encode()
    raise AssertionError(case)


CASES = {
    "not XML": "not an XML file",
    "empty": "is empty",
    "XML that is not ODM": "not a CDISC ODM 1.3 file",
    "ODM for another study": "is for study OTHER-TRIAL",
    "truncated": "truncated",
    "broken in the middle": "not well-formed XML",
    "unknown ItemOID": "I.CRFAPP.NICKNAME",
    "unknown form": "F.secret_form",
    "value of the wrong type": "nineteen sixty",
    "unknown adverse-event term": "ZOMBIE_BITE",
    "dose that is not a number": "lots",
    "log record without a key": "without an ItemGroupRepeatKey",
    "adverse events inside a visit": "inside a visit",
    "billion laughs": "DOCTYPE",
    "external entity": "DOCTYPE",
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_file_is_refused_and_nothing_is_imported(target, tmp_path, case):
    b, valid = target
    path = tmp_path / "hostile.xml"
    path.write_bytes(_mutate(valid, case))
    before_counts, before_data = counts(b.path), dump(b.path)
    with pytest.raises(ImportRefused, match=CASES[case]) as refused:
        import_odm(b.dm, path)
    assert "nothing was imported" in str(refused.value)
    assert counts(b.path) == before_counts
    assert dump(b.path) == before_data
    # the valid file still imports afterwards: the refusal left nothing half-done
    (tmp_path / "ok.xml").write_text(valid, encoding="utf-8")
    assert import_odm(b.dm, tmp_path / "ok.xml").subjects_added == 1


@pytest.mark.parametrize("case", ["billion laughs", "external entity", "not XML", "truncated",
                                  "XML that is not ODM"])
def test_a_hostile_file_creates_no_new_study(target, tmp_path, case):
    from crf_app.services.context import open_new_database

    _, valid = target
    path = tmp_path / "hostile.xml"
    path.write_bytes(_mutate(valid, case))
    db = open_new_database(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        with pytest.raises(ImportRefused):
            import_new_study(db, path, admin=NewUser("admin", "Ada Admin", Role.ADMIN,
                                                     PASSWORD))
    finally:
        db.dispose()
    assert counts(tmp_path / "new.db")["study"] == 0
    assert counts(tmp_path / "new.db")["audit_event"] == 0


FIRST_FILE_CASES = {  # laptop A's first file into an empty laptop: every record is new
    "dose without its EXMISSED value": (
        lambda t: t.replace('ItemOID="I.CRFAPP.EXMISSED" Value="N"',
                            'ItemOID="I.CRFAPP.EXMISSED"', 1), "without dose missed"),
    "renamed SubjectData": (
        lambda t: t.replace("<SubjectData ", "<Item ", 1).replace("</SubjectData>", "</Item>", 1),
        "<Item> elements in ClinicalData"),
    "unknown element in a form": (
        lambda t: re.sub(r'(<ItemGroupData ItemGroupOID="IG\.vital_signs\.[^"]+"[^>]*>)',
                         r'\1<ItemDatum ItemOID="I.vital_signs.PULSE"/>', t, count=1),
        "<ItemDatum> elements inside <ItemGroupData>"),
    "prefixed root element": (
        lambda t: t.replace("<ODM ", "<x:ODM ", 1).replace("</ODM>", "</x:ODM>"),
        "root element is <x:ODM>"),
}


@pytest.mark.parametrize("case", list(FIRST_FILE_CASES))
def test_a_broken_record_refuses_a_merge_and_is_never_stored_from_a_default(
        laptop_a, laptops, tmp_path, case):
    mutate, message = FIRST_FILE_CASES[case]
    export_odm(laptop_a.dm, tmp_path / "a.xml")
    text = mutate((tmp_path / "a.xml").read_text(encoding="utf-8"))
    path = tmp_path / "broken.xml"
    path.write_text(text if isinstance(text, str) else text.decode(), encoding="utf-8")
    b = laptops("b")
    before = counts(b.path)
    with pytest.raises(ImportRefused, match=re.escape(message)):
        import_odm(b.dm, path)
    assert counts(b.path) == before


def test_a_new_study_leaves_out_and_reports_a_dose_without_its_missed_flag(laptop_a, tmp_path):
    from crf_app.integrity import verify_audit
    from crf_app.services.context import open_new_database

    export_odm(laptop_a.dm, tmp_path / "a.xml", snapshot=True)
    text = (tmp_path / "a.xml").read_text(encoding="utf-8")
    broken = tmp_path / "broken.xml"
    broken.write_text(text.replace('ItemOID="I.CRFAPP.EXMISSED" Value="N"', 'ItemOID=""', 1),
                      encoding="utf-8")
    db = open_new_database(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        study, report = import_new_study(db, broken, admin=NewUser("admin", "Ada Admin",
                                                                   Role.ADMIN, PASSWORD))
        assert any("without dose missed" in what for what in report.not_imported)
        assert len(dump(tmp_path / "new.db")["doses"]) == len(dump(laptop_a.path)["doses"]) - 1
        assert verify_audit(study.db).ok
        study.close()
    finally:
        db.dispose()
