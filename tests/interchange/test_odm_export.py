"""ODM 1.3.2 export: valid against the official schema, complete metadata, audit history,
queries, the FileOID chain, permissions, and streaming (memory does not grow with the study)."""

from __future__ import annotations

import tracemalloc
from datetime import date

import pytest
from lxml import etree

from crf_app import odm as oe
from crf_app.domain.errors import PermissionDenied
from crf_app.domain.roles import Role
from crf_app.odm import write_odm
from crf_app.services.forms import save_form
from crf_app.services.odm_export import export_odm, prepare_export
from crf_app.services.subjects import list_subjects, subject_detail
from tests.interchange.odm_helpers import NS


def _parse(path):
    return etree.parse(str(path))


def test_transactional_export_validates_against_the_odm_schema(laptop_a, tmp_path,
                                                               odm_schema):
    summary = export_odm(laptop_a.dm, tmp_path / "a.xml")
    doc = _parse(tmp_path / "a.xml")
    odm_schema.assertValid(doc)
    root = doc.getroot()
    assert root.get("FileType") == "Transactional"
    assert root.get("ODMVersion") == "1.3.2"
    assert root.get("FileOID") == summary.file_oid
    assert root.get("PriorFileOID") is None
    assert root.get("CreationDateTime")
    assert summary.subjects == 6 == len(doc.findall(".//o:SubjectData", NS))


@pytest.mark.parametrize("scope", [{"snapshot": True}, {"site": "S02"},
                                   {"subject": "S01-001"}])
def test_snapshot_site_and_subject_exports_validate(laptop_a, tmp_path, odm_schema, scope):
    summary = export_odm(laptop_a.dm, tmp_path / "s.xml", **scope)
    doc = _parse(tmp_path / "s.xml")
    odm_schema.assertValid(doc)
    assert doc.getroot().get("FileType") == "Snapshot"
    keys = [s.get("SubjectKey") for s in doc.findall(".//o:SubjectData", NS)]
    if "subject" in scope:
        assert keys == ["S01-001"]
    elif "site" in scope:
        assert keys and all(k.startswith("S02-") for k in keys)
    assert summary.subjects == len(keys)


def _item_def(doc, oid):
    return doc.find(f".//o:ItemDef[@OID='{oid}']", NS)


def test_metadata_carries_types_units_limits_codelists_and_repeating_groups(laptop_a,
                                                                          tmp_path):
    export_odm(laptop_a.dm, tmp_path / "a.xml")
    doc = _parse(tmp_path / "a.xml")
    temp = _item_def(doc, "I.vital_signs.TEMP")
    assert temp.get("DataType") == "float" and temp.get("SignificantDigits") == "1"
    checks = {(rc.get("Comparator"), rc.get("SoftHard")): rc.find("o:CheckValue", NS).text
              for rc in temp.findall("o:RangeCheck", NS)}
    assert checks == {("GE", "Hard"): "30.0", ("LE", "Hard"): "45.0",
                      ("GE", "Soft"): "35.5", ("LE", "Soft"): "38.0"}
    unit_oid = temp.find("o:MeasurementUnitRef", NS).get("MeasurementUnitOID")
    unit = doc.find(f".//o:MeasurementUnit[@OID='{unit_oid}']", NS)
    assert unit.find(".//o:TranslatedText", NS).text == "°C"
    assert temp.find("o:Question/o:TranslatedText", NS).text == "Temperature"
    assert _item_def(doc, "I.vital_signs.SYSBP").get("DataType") == "integer"
    assert _item_def(doc, "I.vital_signs.VSTIM").get("DataType") == "time"
    assert _item_def(doc, "I.conmeds.CMSTDTC").get("DataType") == "partialDate"
    assert _item_def(doc, "I.conmeds.CMTRT").get("DataType") == "text"
    route = _item_def(doc, "I.conmeds.CMROUTE")
    cl = doc.find(f".//o:CodeList[@OID='{route.find('o:CodeListRef', NS).get('CodeListOID')}']",
                  NS)
    decodes = {i.get("CodedValue"): i.find(".//o:TranslatedText", NS).text
               for i in cl.findall("o:CodeListItem", NS)}
    assert decodes["PO"] == "Oral"
    assert doc.find(".//o:ItemGroupDef[@OID='IG.conmeds.medications']", NS).get(
        "Repeating") == "Yes"
    assert doc.find(".//o:ItemGroupDef[@OID='IG.vital_signs.vital_signs']", NS).get(
        "Repeating") == "No"
    bmi_ref = doc.find(".//o:ItemRef[@ItemOID='I.vital_signs.BMI']", NS)
    method = doc.find(f".//o:MethodDef[@OID='{bmi_ref.get('MethodOID')}']", NS)
    assert "WEIGHT" in method.find("o:FormalExpression", NS).text
    events = [r.get("StudyEventOID") for r in doc.findall(".//o:Protocol/o:StudyEventRef", NS)]
    assert events == [oe.SUBJECT_EVENT_OID, "SE.SCR", "SE.BL", "SE.D7", "SE.D14", "SE.FU30"]


def test_clinical_data_carries_each_change_with_its_audit_record_and_queries(laptop_a,
                                                                          tmp_path):
    inv = laptop_a.inv
    first = next(r for r in list_subjects(inv) if r.screening_number == "S03-003")  # baseline
    scr = subject_detail(inv, first.id).visits[0]
    from crf_app.services.forms import open_form

    snap = open_form(inv, scr.id, "vital_signs")
    raw = dict(snap.raw, PULSE="95")
    save_form(inv, scr.id, "vital_signs", raw, complete=True, reason="transcription error")
    export_odm(laptop_a.dm, tmp_path / "a.xml")
    doc = _parse(tmp_path / "a.xml")
    subj = doc.find(f".//o:SubjectData[@SubjectKey='{first.screening_number}']", NS)
    pulses = [i for i in subj.iter(f"{{{NS['o']}}}ItemData")
              if i.get("ItemOID") == "I.vital_signs.PULSE"]
    scr_pulses = [p for p in pulses
                  if p.getparent().getparent().getparent().get("StudyEventOID") == "SE.SCR"]
    assert [p.get("TransactionType") for p in scr_pulses] == ["Insert", "Update"]
    assert scr_pulses[-1].get("Value") == "95"
    record = scr_pulses[-1].find("o:AuditRecord", NS)
    assert record.find("o:UserRef", NS).get("UserOID") == "USR.inv"
    assert record.find("o:LocationRef", NS).get("LocationOID") == f"LOC.{first.site}"
    assert record.find("o:ReasonForChange", NS).text == "transcription error"
    assert record.find("o:DateTimeStamp", NS).text.endswith("+00:00")
    comments = [c.text for c in doc.iter(f"{{{NS['o']}}}Comment")]
    assert any("Query (auto, open)" in c and "Systolic" in c for c in comments)
    vstim = next(i for i in subj.iter(f"{{{NS['o']}}}ItemData")
                 if i.get("ItemOID") == "I.vital_signs.VSTIM")
    assert len(vstim.get("Value")) == 8  # ISO time with seconds


def test_transactional_files_chain_and_carry_only_changed_subjects(laptop_a, tmp_path):
    dm = laptop_a.dm
    first = export_odm(dm, tmp_path / "1.xml")
    second = export_odm(dm, tmp_path / "2.xml")
    assert second.prior_file_oid == first.file_oid
    assert second.subjects == 0
    subject = next(r for r in list_subjects(laptop_a.inv) if r.screening_number == "S03-003")
    scr = subject_detail(laptop_a.inv, subject.id).visits[0]
    from crf_app.services.forms import open_form

    raw = dict(open_form(laptop_a.inv, scr.id, "vital_signs").raw, PULSE="97")
    save_form(laptop_a.inv, scr.id, "vital_signs", raw, complete=True, reason="re-measured")
    third = export_odm(dm, tmp_path / "3.xml")
    assert third.prior_file_oid == second.file_oid
    keys = [s.get("SubjectKey") for s in _parse(tmp_path / "3.xml").findall(
        ".//o:SubjectData", NS)]
    assert keys == [subject.screening_number]
    snapshot = export_odm(dm, tmp_path / "snap.xml", snapshot=True)
    assert snapshot.prior_file_oid is None and snapshot.subjects == 6
    fourth = export_odm(dm, tmp_path / "4.xml")
    assert fourth.prior_file_oid == third.file_oid  # snapshots stay out of the chain


def test_a_coordinator_may_not_export(laptops, as_role, tmp_path):
    coordinator = as_role(Role.COORDINATOR)
    with pytest.raises(PermissionDenied):
        export_odm(coordinator, tmp_path / "x.xml")
    assert not (tmp_path / "x.xml").exists()


def test_a_cancelled_export_leaves_no_file(laptop_a, tmp_path):
    from crf_app.odm import ExportCancelled

    with pytest.raises(ExportCancelled):
        export_odm(laptop_a.dm, tmp_path / "x.xml", cancelled=lambda: True)
    assert not list(tmp_path.glob("x.xml*"))
    again = export_odm(laptop_a.dm, tmp_path / "y.xml")
    assert again.file_oid.endswith(".T00001")  # the cancelled file did not enter the chain


# --- streaming ----------------------------------------------------------------------------------
def _bulk(study, n):
    from benchmarks.common import bulk_subjects

    bulk_subjects(study, n, baseline=date(2026, 1, 10))


def test_the_file_is_written_while_subjects_are_still_being_read(laptops, tmp_path):
    lap = laptops("big")
    _bulk(lap.study, 300)
    plan = prepare_export(lap.dm, snapshot=True, batch=20)
    out = tmp_path / "big.xml"
    sizes = []
    source = plan.subjects

    def watched():
        for i, rec in enumerate(source):
            if i % 20 == 0:
                sizes.append(out.stat().st_size)
            yield rec

    plan.subjects = watched()
    with out.open("wb") as fh:
        n, _ = write_odm(fh, plan)
    assert n == 300
    final = out.stat().st_size
    assert sizes[-1] > final / 2, "subjects were gathered before anything was written"
    assert sorted(sizes) == sizes and len(set(sizes)) > 5


def test_export_memory_does_not_grow_with_the_number_of_subjects(laptops, tmp_path):
    peaks = {}
    for n in (60, 480):
        lap = laptops(f"m{n}")
        _bulk(lap.study, n)
        plan = prepare_export(lap.dm, snapshot=True, batch=30)
        tracemalloc.start()
        with (tmp_path / f"{n}.xml").open("wb") as fh:
            write_odm(fh, plan)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        plan.close()
    assert peaks[480] < peaks[60] * 1.5, peaks


# --- adverse events, dosing, signatures ---------------------------------------------------------
def test_logs_travel_as_repeating_item_groups_with_their_audit_records(laptop_full, tmp_path,
                                                                       odm_schema):
    export_odm(laptop_full.dm, tmp_path / "a.xml")
    doc = _parse(tmp_path / "a.xml")
    odm_schema.assertValid(doc)
    for group in (oe.AE_GROUP_OID, oe.DOSE_GROUP_OID, oe.SIGNATURE_GROUP_OID):
        assert doc.find(f".//o:ItemGroupDef[@OID='{group}']", NS).get("Repeating") == "Yes"
    assert _item_def(doc, "I.CRFAPP.AETOXGR").get("DataType") == "integer"
    subj = doc.find(".//o:SubjectData[@SubjectKey='S02-005']", NS)
    record_event = subj.find(f"o:StudyEventData[@StudyEventOID='{oe.SUBJECT_EVENT_OID}']", NS)
    aes = record_event.findall(f"o:FormData[@FormOID='{oe.AE_FORM_OID}']/o:ItemGroupData", NS)
    assert len(aes) == 2 and len({g.get("ItemGroupRepeatKey") for g in aes}) == 2
    first = aes[0]
    severity = [i for i in first.findall("o:ItemData", NS)
                if i.get("ItemOID") == "I.CRFAPP.AESEV"]
    assert [(i.get("Value"), i.get("TransactionType")) for i in severity] == \
        [("MILD", "Insert"), ("MODERATE", "Update")]
    record = severity[-1].find("o:AuditRecord", NS)
    assert record.find("o:ReasonForChange", NS).text == "re-graded after review"
    assert record.find("o:UserRef", NS).get("UserOID") == "USR.inv"
    assert first.find("o:AuditRecord/o:DateTimeStamp", NS) is not None  # the row's last change
    sae = {i.get("ItemOID"): i.get("Value") for i in aes[1].findall("o:ItemData", NS)}
    assert sae["I.CRFAPP.AESCRIT"] == "HOSPITALISATION,MEDICALLY_IMPORTANT"
    assert sae["I.CRFAPP.AETERM"] == "Épistaxis — «nez»\u00a0<droit> & gauche"
    assert sae["I.CRFAPP.AESAERDT"] and sae["I.CRFAPP.AESER"] == "Y"
    doses = record_event.findall(f"o:FormData[@FormOID='{oe.DOSE_FORM_OID}']/o:ItemGroupData",
                                 NS)
    lots = [[i.get("Value") for i in g.findall("o:ItemData", NS)
             if i.get("ItemOID") == "I.CRFAPP.EXLOT"] for g in doses]
    assert any(len(values) == 2 and values[-1] == "LOT-9999Z" for values in lots)
    # the dose above the regimen raised a query: an annotation of that dosing record
    comments = [c.text for g in doses for c in g.iter(f"{{{NS['o']}}}Comment")]
    assert any(c.startswith("Query (auto, open)") for c in comments)


def test_signatures_are_odm_signatures_referencing_signature_defs(laptop_full, tmp_path,
                                                                  odm_schema):
    export_odm(laptop_full.dm, tmp_path / "a.xml", subject="S02-005")
    doc = _parse(tmp_path / "a.xml")
    odm_schema.assertValid(doc)
    defs = {d.get("OID"): d.find("o:Meaning", NS).text
            for d in doc.findall(".//o:AdminData/o:SignatureDef", NS)}
    assert defs and all(d.get("Methodology") == "Electronic"
                        for d in doc.findall(".//o:SignatureDef", NS))
    manifest = doc.findall(f".//o:ItemGroupData[@ItemGroupOID='{oe.SIGNATURE_GROUP_OID}']", NS)
    signed = []
    for group in manifest:
        sig = group.find("o:Signature", NS)
        values = {i.get("ItemOID"): i.get("Value") for i in group.findall("o:ItemData", NS)}
        assert defs[sig.find("o:SignatureRef", NS).get("SignatureOID")] == \
            values["I.CRFAPP.SGMEAN"]
        assert sig.find("o:UserRef", NS).get("UserOID") == "USR.inv"
        signed.append((values["I.CRFAPP.SGSCOPE"], values["I.CRFAPP.SGSTATE"]))
    assert sorted(signed) == [("casebook", "invalidated"), ("form", "invalidated"),
                              ("visit", "valid")]
    # the valid visit signature also sits on the visit it signs; the invalidated ones nowhere
    subj = doc.find(".//o:SubjectData", NS)
    assert subj.find("o:Signature", NS) is None
    scr = subj.find("o:StudyEventData[@StudyEventOID='SE.SCR']", NS)
    assert defs[scr.find("o:Signature/o:SignatureRef", NS).get("SignatureOID")] == \
        "Reviewed and approved"
    assert scr.find("o:FormData[@FormOID='F.vital_signs']/o:Signature", NS) is None


def test_a_value_xml_cannot_carry_refuses_the_export_and_leaves_no_file(laptop_a, tmp_path):
    from crf_app.odm import ExportRefused, write_odm_file

    plan = prepare_export(laptop_a.dm, snapshot=True)
    source = plan.subjects

    def tampered():
        for rec in source:
            rec.fields[1].value = "A\x01B"  # a control character (never stored by crf-app)
            yield rec

    plan.subjects = tampered()
    with pytest.raises(ExportRefused, match="U\\+0001"):
        write_odm_file(tmp_path / "bad.xml", plan)
    plan.close()
    assert not list(tmp_path.glob("bad.xml*"))


def test_special_characters_round_trip_through_the_text_writer(laptop_a, tmp_path):
    from io import BytesIO

    plan = prepare_export(laptop_a.dm, subject="S02-005", snapshot=True)
    [rec] = list(plan.subjects)
    text = 'a < b & "c" > d\n\ttab\r — ü'
    rec.fields[1].value = text
    plan.subjects = iter([rec])
    out = BytesIO()
    write_odm(out, plan)
    doc = etree.fromstring(out.getvalue())
    item = doc.find(".//o:ItemData[@ItemOID='I.CRFAPP.INITIALS']", NS)
    assert item.get("Value") == text
