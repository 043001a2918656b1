"""Merging laptops: all or nothing, history kept, conflicts for values changed on both sides,
idempotent, and the FileOID chain refusing gaps, replays and a laptop's own files."""

from __future__ import annotations

import sqlite3
from datetime import date, timedelta

import pytest

from crf_app.domain.errors import PermissionDenied
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.integrity import verify_audit
from crf_app.services.forms import open_form, save_form
from crf_app.services.odm_export import export_odm
from crf_app.services.odm_import import (
    ImportRefused,
    import_odm,
    list_conflicts,
    resolve_conflict,
)
from crf_app.services.subjects import (
    enroll_subject,
    list_subjects,
    record_visit_date,
    subject_detail,
)
from tests.interchange.odm_helpers import counts, dump, edit

VITALS = {"VSTIM": "09:30", "SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6",
          "WEIGHT": "80.0", "HEIGHT": "180"}


def _visit_id(ctx, sn: str, code: str) -> int:
    sid = next(r.id for r in list_subjects(ctx) if r.screening_number == sn)
    return next(v.id for v in subject_detail(ctx, sid).visits if v.code == code)


def _set(ctx, sn: str, code: str, form: str, reason: str, **values: str) -> None:
    visit = _visit_id(ctx, sn, code)
    raw = dict(open_form(ctx, visit, form).raw, **values)
    save_form(ctx, visit, form, raw, complete=True, reason=reason)


def _value(lap, sn, code, form, item):
    return open_form(lap.inv, _visit_id(lap.inv, sn, code), form).raw.get(item)


@pytest.fixture
def pair(laptop_a, laptops, tmp_path):
    """Laptop A with data, laptop B that imported A's first file: both hold the same data."""
    export_odm(laptop_a.dm, tmp_path / "x1.xml")
    b = laptops("b")
    import_odm(b.dm, tmp_path / "x1.xml")
    assert dump(b.path)["values"] == dump(laptop_a.path)["values"]
    return laptop_a, b


@pytest.fixture
def conflicted(pair, tmp_path):
    """Both laptops changed S03-003's screening pulse; A also changed the temperature and
    enrolled a subject, B the weight. B has imported A's second file."""
    a, b = pair
    _set(a.inv, "S03-003", "SCR", "vital_signs", "re-measured on A", PULSE="95", TEMP="36.9")
    _set(b.inv, "S03-003", "SCR", "vital_signs", "re-measured on B", PULSE="99",
         WEIGHT="81.5")
    today = date.today()
    sid = enroll_subject(a.inv, Enrollment("S01-099", "S01", "NEW", 1970, "F", "NSX",
                                           today - timedelta(days=1), today - timedelta(days=1)))
    scr = subject_detail(a.inv, sid).visits[0].id
    record_visit_date(a.inv, scr, today)
    save_form(a.inv, scr, "vital_signs", VITALS, complete=True)
    export_odm(a.dm, tmp_path / "x2.xml")
    report = import_odm(b.dm, tmp_path / "x2.xml")
    return a, b, report


def test_a_value_changed_on_both_laptops_becomes_a_conflict_and_nothing_is_lost(conflicted):
    a, b, report = conflicted
    assert len(report.conflicts) == 1 and "PULSE" in report.conflicts[0]
    assert report.subjects_added == 1 and report.subjects_updated == 1
    assert _value(b, "S03-003", "SCR", "vital_signs", "PULSE") == "99"  # local value kept
    assert _value(b, "S03-003", "SCR", "vital_signs", "TEMP") == "36.9"  # A's change applied
    assert _value(b, "S03-003", "SCR", "vital_signs", "WEIGHT") == "81.5"  # B's change kept
    assert _value(b, "S01-099", "SCR", "vital_signs", "SYSBP") == "128"  # A's new subject
    [c] = list_conflicts(b.dm)
    assert (c.subject, c.visit, c.form, c.field) == ("S03-003", "SCR", "vital_signs", "PULSE")
    assert (c.local_value, c.local_user, c.incoming_value, c.incoming_user) == \
        ("99", "inv", "95", "inv")
    assert c.state == "open" and c.file_oid == report.file_oid
    # every value of A is on B, except the two B changed itself
    a_values = {v[:5]: v[5] for v in dump(a.path)["values"]}
    b_values = {v[:5]: v[5] for v in dump(b.path)["values"]}
    differ = {k for k in a_values if b_values.get(k) != a_values[k]}
    assert differ == {("S03-003", "SCR", "vital_signs", "PULSE", 0),
                      ("S03-003", "SCR", "vital_signs", "WEIGHT", 0),
                      ("S03-003", "SCR", "vital_signs", "BMI", 0)}  # recomputed from weight
    assert verify_audit(b.study.db).ok


def test_taking_the_incoming_value_is_audited_and_both_laptops_then_agree(conflicted,
                                                                          tmp_path):
    a, b, _ = conflicted
    [c] = list_conflicts(b.dm)
    resolve_conflict(b.dm, c.id, "incoming", "A's measurement is the source document")
    assert _value(b, "S03-003", "SCR", "vital_signs", "PULSE") == "95"
    assert list_conflicts(b.dm) == []
    [done] = list_conflicts(b.dm, state="resolved")
    assert (done.resolution, done.resolved_by) == ("incoming", "dm")
    con = sqlite3.connect(b.path)
    resolve_events = con.execute("select username, reason from audit_event where "
                                 "entity = 'merge_conflict' and action = 'resolve'").fetchall()
    con.close()
    assert resolve_events[0][0] == "dm" and "source document" in resolve_events[0][1]
    export_odm(b.dm, tmp_path / "y1.xml")
    back = import_odm(a.dm, tmp_path / "y1.xml")
    assert back.conflicts == []
    assert dump(a.path)["values"] == dump(b.path)["values"]
    assert verify_audit(a.study.db).ok and verify_audit(b.study.db).ok


def test_keeping_the_local_value_sends_the_decision_to_the_other_laptop(conflicted, tmp_path):
    a, b, _ = conflicted
    [c] = list_conflicts(b.dm)
    resolve_conflict(b.dm, c.id, "local")
    assert _value(b, "S03-003", "SCR", "vital_signs", "PULSE") == "99"
    export_odm(b.dm, tmp_path / "y1.xml")
    back = import_odm(a.dm, tmp_path / "y1.xml")
    assert back.conflicts == []
    assert _value(a, "S03-003", "SCR", "vital_signs", "PULSE") == "99"
    assert dump(a.path)["values"] == dump(b.path)["values"]
    # and the next file from A does not reopen the question on B
    export_odm(a.dm, tmp_path / "x3.xml")
    assert import_odm(b.dm, tmp_path / "x3.xml").conflicts == []


def test_a_visit_date_changed_on_both_laptops_is_a_conflict_too(pair, tmp_path):
    a, b = pair
    visit = _visit_id(a.inv, "S01-004", "D7")
    planned = next(v.planned_date for v in subject_detail(
        a.inv, next(r.id for r in list_subjects(a.inv) if r.screening_number == "S01-004")
    ).visits if v.code == "D7")
    record_visit_date(a.inv, visit, planned - timedelta(days=1), reason="date from source")
    record_visit_date(b.inv, _visit_id(b.inv, "S01-004", "D7"), planned + timedelta(days=1),
                      reason="typo")
    export_odm(a.dm, tmp_path / "x2.xml")
    report = import_odm(b.dm, tmp_path / "x2.xml")
    [c] = list_conflicts(b.dm)
    assert (c.visit, c.field) == ("D7", "actual_date") and len(report.conflicts) == 1
    resolve_conflict(b.dm, c.id, "incoming")
    row = next(v for v in dump(b.path)["visits"] if v[:2] == ("S01-004", "D7"))
    assert row[6] == (planned - timedelta(days=1)).isoformat()


def test_importing_the_same_file_twice_changes_nothing(conflicted, tmp_path):
    _, b, _ = conflicted
    before, data = counts(b.path), dump(b.path)
    again = import_odm(b.dm, tmp_path / "x2.xml")
    assert again.already_imported
    assert counts(b.path) == before and dump(b.path) == data


def test_a_gap_in_the_chain_and_a_replay_are_refused(pair, tmp_path):
    a, b = pair
    _set(a.inv, "S03-003", "SCR", "vital_signs", "second", PULSE="91")
    export_odm(a.dm, tmp_path / "x2.xml")
    _set(a.inv, "S03-003", "SCR", "vital_signs", "third", PULSE="92")
    export_odm(a.dm, tmp_path / "x3.xml")
    before = counts(b.path)
    with pytest.raises(ImportRefused, match="has not been imported here"):
        import_odm(b.dm, tmp_path / "x3.xml")
    assert counts(b.path) == before
    import_odm(b.dm, tmp_path / "x2.xml")
    import_odm(b.dm, tmp_path / "x3.xml")
    assert _value(b, "S03-003", "SCR", "vital_signs", "PULSE") == "92"
    after = counts(b.path)
    for replayed in ("x1.xml", "x2.xml"):
        with pytest.raises(ImportRefused, match="replay"):
            import_odm(b.dm, tmp_path / replayed)
    assert counts(b.path) == after
    assert import_odm(b.dm, tmp_path / "x3.xml").already_imported
    tampered = edit(tmp_path / "x3.xml", tmp_path / "x3-altered.xml", 'Value="92"',
                    'Value="93"')
    with pytest.raises(ImportRefused, match="different file with the same FileOID"):
        import_odm(b.dm, tampered)
    assert counts(b.path) == after


def test_a_laptop_refuses_its_own_file_and_snapshots_are_not_merged(pair, tmp_path):
    a, b = pair
    with pytest.raises(ImportRefused, match="exported from this database"):
        import_odm(a.dm, tmp_path / "x1.xml")
    export_odm(a.dm, tmp_path / "snap.xml", snapshot=True)
    with pytest.raises(ImportRefused, match="Snapshot file"):
        import_odm(b.dm, tmp_path / "snap.xml")


def test_importing_needs_the_import_permission(laptop_a, as_role, tmp_path):
    export_odm(laptop_a.dm, tmp_path / "x1.xml")
    with pytest.raises(PermissionDenied):
        import_odm(as_role(Role.COORDINATOR), tmp_path / "x1.xml")
    with pytest.raises(PermissionDenied):
        import_odm(as_role(Role.MONITOR), tmp_path / "x1.xml")


def test_only_a_data_manager_resolves_conflicts(conflicted):
    from dataclasses import replace

    _, b, _ = conflicted
    [c] = list_conflicts(b.dm)
    admin = replace(b.dm, user=replace(b.dm.user, role=Role.ADMIN))
    with pytest.raises(PermissionDenied):
        resolve_conflict(admin, c.id, "incoming")
    with pytest.raises(PermissionDenied):
        resolve_conflict(b.inv, c.id, "incoming")
    assert list_conflicts(b.dm)[0].state == "open"


# --- the adverse-event and dosing logs ----------------------------------------------------------
def _aes(lap, sn):
    from crf_app.services.adverse_events import list_adverse_events
    from tests.interchange.odm_helpers import subject_id

    return list_adverse_events(lap.inv, subject_id(lap.inv, sn))


def _without_sequence(rows):
    return sorted((r[:1] + r[2:] for r in rows), key=repr)


def test_an_adverse_event_changed_on_both_laptops_is_a_conflict_and_nothing_is_lost(pair,
                                                                                   tmp_path):
    from dataclasses import replace

    from crf_app.domain.adverse_events import AeInput
    from crf_app.domain.dosing import DoseInput
    from crf_app.services.adverse_events import (
        ae_input,
        record_adverse_event,
        update_adverse_event,
    )
    from crf_app.services.dosing import list_doses, record_dose
    from tests.interchange.odm_helpers import subject_id

    a, b = pair
    sn = "S02-005"
    [on_a] = _aes(a, sn)
    update_adverse_event(a.inv, on_a.id, replace(ae_input(on_a), severity="MODERATE",
                                                 grade="2", action="DOSE_REDUCED"),
                         reason="re-graded on A")
    [on_b] = _aes(b, sn)
    update_adverse_event(b.inv, on_b.id, replace(ae_input(on_b), severity="SEVERE", grade="3",
                                                 treatment="Saline spray"),
                         reason="re-graded on B")
    day = (date.today() - timedelta(days=1)).isoformat()
    headache = AeInput(term="HEADACHE", location="NOT_APPLICABLE", start_date=day,
                       ongoing=True, severity="MILD", grade="1", serious="N",
                       relationship="UNLIKELY", action="NONE", outcome="RECOVERING")
    record_adverse_event(a.inv, subject_id(a.inv, sn), headache)  # AE2 on A
    record_adverse_event(b.inv, subject_id(b.inv, sn),  # AE2 on B: another event
                         replace(headache, term="DIZZINESS"))
    record_dose(a.inv, subject_id(a.inv, sn), DoseInput(date=day, missed=True,
                                                        missed_reason="Vomited"))
    record_dose(b.inv, subject_id(b.inv, sn), DoseInput(date=day, missed=True,
                                                        missed_reason="Forgot"))
    doses_before = len(list_doses(b.inv, subject_id(b.inv, sn)))
    export_odm(a.dm, tmp_path / "x2.xml")
    report = import_odm(b.dm, tmp_path / "x2.xml")
    # the two fields both laptops changed are conflicts; the local values stay
    assert sorted(report.conflicts) == [
        f"{sn}/AE1 grade: here '3', in the file '2'",
        f"{sn}/AE1 severity: here 'SEVERE', in the file 'MODERATE'"]
    conflicts = list_conflicts(b.dm)
    assert {(c.subject, c.visit, c.form, c.field, c.local_value, c.incoming_value,
             c.incoming_user) for c in conflicts} == {
        (sn, "", "Adverse events (AE1)", "severity", "SEVERE", "MODERATE", "inv"),
        (sn, "", "Adverse events (AE1)", "grade", "3", "2", "inv")}
    ae1, ae2, ae3 = _aes(b, sn)
    assert (ae1.severity, ae1.grade) == ("SEVERE", 3)  # kept until a data manager decides
    assert ae1.action == "DOSE_REDUCED"  # changed only on A: applied
    assert ae1.treatment == "Saline spray"  # changed only on B: kept
    # both new events are there: A's AE2 became AE3 here, and the report says so
    assert (ae2.term, ae3.term) == ("DIZZINESS", "HEADACHE")
    assert any("AE3 here" in n for n in report.notes)
    assert len(list_doses(b.inv, subject_id(b.inv, sn))) == doses_before + 1
    assert report.log_rows_added == 2 and report.log_values_changed >= 1
    assert verify_audit(b.study.db).ok
    # the data manager takes A's grading; B's file then brings A up to date, in agreement
    for c in conflicts:
        resolve_conflict(b.dm, c.id, "incoming", "A's grading follows the source")
    ae1 = _aes(b, sn)[0]
    assert (ae1.severity, ae1.grade) == ("MODERATE", 2) and list_conflicts(b.dm) == []
    export_odm(b.dm, tmp_path / "y1.xml")
    back = import_odm(a.dm, tmp_path / "y1.xml")
    assert back.conflicts == [] and back.log_rows_added == 2  # B's AE2 and B's missed dose
    a_rows, b_rows = dump(a.path), dump(b.path)
    assert _without_sequence(a_rows["adverse_events"]) == \
        _without_sequence(b_rows["adverse_events"])
    assert a_rows["doses"] == b_rows["doses"]
    assert verify_audit(a.study.db).ok


def test_a_dosing_record_corrected_on_both_laptops_is_a_conflict(pair, tmp_path):
    from dataclasses import replace

    from crf_app.services.dosing import dose_input, list_doses, update_dose
    from tests.interchange.odm_helpers import subject_id

    a, b = pair
    sn = "S01-004"
    first_a = list_doses(a.inv, subject_id(a.inv, sn))[0]
    first_b = list_doses(b.inv, subject_id(b.inv, sn))[0]
    update_dose(a.inv, first_a.id, replace(dose_input(first_a), lot="LOT-A"), reason="A")
    update_dose(b.inv, first_b.id, replace(dose_input(first_b), lot="LOT-B"), reason="B")
    export_odm(a.dm, tmp_path / "x2.xml")
    report = import_odm(b.dm, tmp_path / "x2.xml")
    [c] = list_conflicts(b.dm)
    assert (c.field, c.local_value, c.incoming_value) == ("lot", "LOT-B", "LOT-A")
    assert c.form.startswith("Dosing (dose/") and len(report.conflicts) == 1
    resolve_conflict(b.dm, c.id, "local")
    assert list_doses(b.inv, subject_id(b.inv, sn))[0].lot == "LOT-B"


def test_signatures_travel_and_a_merged_change_invalidates_the_signature_covering_it(pair,
                                                                                    tmp_path):
    from crf_app.services.signoff import sign, signature_manifest
    from tests.interchange.odm_helpers import PASSWORD, subject_id

    a, b = pair
    sign(a.inv, subject_id(a.inv, "S02-005"), scope="casebook", password=PASSWORD,
         meaning="Responsible investigator sign-off")
    sign(b.inv, subject_id(b.inv, "S03-003"), scope="form", password=PASSWORD,
         meaning="Reviewed and approved", visit_id=_visit_id(b.inv, "S03-003", "SCR"),
         form_id="vital_signs")
    _set(a.inv, "S03-003", "SCR", "vital_signs", "re-measured on A", PULSE="95")
    export_odm(a.dm, tmp_path / "x2.xml")
    report = import_odm(b.dm, tmp_path / "x2.xml")
    assert (report.signatures_added, report.signatures_invalidated) == (1, 1)
    [casebook] = signature_manifest(b.dm, subject_id(b.dm, "S02-005"))
    assert (casebook.scope, casebook.username, casebook.state) == ("casebook", "inv", "valid")
    [signed_here] = signature_manifest(b.dm, subject_id(b.dm, "S03-003"))
    assert signed_here.state == "invalidated"  # A's merged change touched what B signed
    export_odm(b.dm, tmp_path / "y1.xml")
    back = import_odm(a.dm, tmp_path / "y1.xml")
    assert back.signatures_added == 1 and back.conflicts == []
    assert dump(a.path)["signatures"] == dump(b.path)["signatures"]
    assert verify_audit(a.study.db).ok and verify_audit(b.study.db).ok
