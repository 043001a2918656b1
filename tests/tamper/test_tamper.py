"""Tampering behind the app's back (raw sqlite3) is detected and named by `verify-audit`.

Each test plants one kind of tampering in a copy of the busy study and checks that the report
names the entity, its id (screening number / visit / form / item), and the expected and found
values.
"""

from __future__ import annotations

import sqlite3

import pytest

from crf_app.integrity.replay import CHANGED, MISSING, ORPHAN, UNAUDITED, Discrepancy
from crf_app.storage.audit import compute_hash
from tests.tamper.scenario import event_id, raw, value_id
from tests.tamper.test_clean import verify

PULSE = "S01-004/SCR/vital_signs/PULSE"


def only(report, entity: str, entity_id: str, field: str | None = None) -> Discrepancy:
    """The one discrepancy of the report about (entity, entity id[, field])."""
    assert not report.ok
    found = [d for d in report.replay.discrepancies if d.entity == entity and
             d.entity_id == entity_id and (field is None or d.field == field)]
    assert len(found) == 1, report.text()
    return found[0]


def replay_only(report) -> list[str]:
    return [d.text() for d in report.replay.discrepancies]


# --- values changed -----------------------------------------------------------------------------
def test_an_item_value_changed(victim):
    raw(victim, f"update item_value set value = '140' where id = "
                f"{value_id(victim, 'S01-004', 'SCR', 'vital_signs', 'PULSE')}")
    report = verify(victim)
    assert report.chain_ok  # the trail itself is intact: only the replay can see this
    d = only(report, "item", PULSE)
    assert (d.kind, d.expected, d.found) == (CHANGED, "77", "140")
    assert d.event_id == event_id(victim, f"entity_id = '{PULSE}'")
    assert f"item {PULSE}: stored '140', but the audit trail says '77'" in d.text()
    assert report.replay.found == 1
    assert any("1 discrepancy" in line for line in report.lines())


def test_a_value_in_a_repeating_table_changed(victim):
    raw(victim, f"update item_value set value = 'Warfarin' where id = "
                f"{value_id(victim, 'S01-004', 'SCR', 'conmeds', 'CMTRT', 0)}")
    d = only(verify(victim), "item", "S01-004/SCR/conmeds/CMTRT[1]")
    assert (d.kind, d.expected, d.found) == (CHANGED, "Atorvastatin", "Warfarin")


@pytest.mark.parametrize(("column", "value", "field", "expected", "found"), [
    ("birth_year", "1999", "birth_year", None, "1999"),
    ("sex", "'X'", "sex", None, "X"),
    ("status", "'on_study'", "status", "completed", "on_study"),
    ("baseline_date", "'2020-01-01'", "baseline_date", None, "2020-01-01"),
    ("site_id", "(select id from site where code = 'S01')", "site", "S03", "S01"),
])
def test_a_subject_field_changed(victim, column, value, field, expected, found):
    raw(victim, f"update subject set {column} = {value} where screening_number = 'S03-006'")
    d = only(verify(victim), "subject", "S03-006", field)
    assert d.kind == CHANGED and d.found == found
    if expected is not None:
        assert d.expected == expected
    assert d.expected is not None and d.expected != d.found
    assert d.text().startswith(f"subject S03-006 {field}: stored ")


def test_the_screening_number_changed_is_named_once(victim):
    raw(victim, "update subject set screening_number = 'S01-404' where "
                "screening_number = 'S01-004'")
    report = verify(victim)
    d = only(report, "subject", "S01-004", "screening_number")
    assert (d.expected, d.found) == ("S01-004", "S01-404")
    assert report.replay.found == 1  # its visits, forms and values are still matched


@pytest.mark.parametrize(("sql", "field", "kind", "expected", "found"), [
    ("severity = 'SEVERE'", "severity", CHANGED, "MILD", "SEVERE"),
    ("grade = 3", "grade", CHANGED, "1", "3"),
    ("ongoing = 1", "ongoing", CHANGED, "N", "Y"),
    ("treatment = ''", "treatment", CHANGED, "Saline spray", None),
    ("relationship = 'NOT_RELATED'", "relationship", CHANGED, "PROBABLE", "NOT_RELATED"),
    # never set by the app: the audit trail has no value for it
    ("sae_life_threatening = 1", "criteria", UNAUDITED, None, "LIFE_THREATENING"),
    ("start_time = '23:59:00.000000'", "start_time", UNAUDITED, None, "23:59:00"),
])
def test_an_adverse_event_field_changed(victim, sql, field, kind, expected, found):
    raw(victim, f"update adverse_event set {sql} where sequence = 1 and subject_id = "
                "(select id from subject where screening_number = 'S02-005')")
    d = only(verify(victim), "adverse_event", "S02-005/AE1", field)
    assert (d.kind, d.expected, d.found) == (kind, expected, found)
    assert d.text().startswith(f"adverse event S02-005/AE1 {field}: stored ")


def test_the_sae_report_time_changed(victim):
    raw(victim, "update adverse_event set sae_reported_at = '2020-01-01 00:00:00.000000' "
                "where serious = 1")
    d = only(verify(victim), "adverse_event", "S03-012/AE1", "sae_reported_at")
    assert d.kind == CHANGED and d.found.startswith("2020-01-01T00:00:00")


@pytest.mark.parametrize(("sql", "field", "found"), [
    ("lot = 'LOT-FORGED'", "lot", "LOT-FORGED"),
    ("dose_mg = '0.5'", "dose_mg", "0.5"),
    ("instillations = 9", "instillations", "9"),
    ("dose_date = '2020-02-02'", "date", "2020-02-02"),
])
def test_a_dosing_field_changed(victim, sql, field, found):
    [[(dose,)]] = raw(victim, "select min(d.id) from dosing_record d join subject s on "
                              "s.id = d.subject_id where s.screening_number = 'S02-005' "
                              "and not d.missed")
    raw(victim, f"update dosing_record set {sql} where id = {dose}")
    d = only(verify(victim), "dose", f"S02-005/dose/{dose}", field)
    assert (d.kind, d.found) == (CHANGED, found) and d.expected not in (None, found)


def test_a_form_status_and_a_visit_date_changed(victim):
    raw(victim, "update form_instance set status = 'in_progress' where id = (select f.id from "
                "form_instance f join visit v on v.id = f.visit_id join subject s on "
                "s.id = v.subject_id where s.screening_number = 'S01-004' and "
                "v.visit_code = 'SCR' and f.form_id = 'nihss')",
        "update visit set actual_date = '2020-03-03' where visit_code = 'D7' and subject_id = "
        "(select id from subject where screening_number = 'S01-004')")
    report = verify(victim)
    form = only(report, "form", "S01-004/SCR/nihss", "status")
    assert (form.expected, form.found) == ("complete", "in_progress")
    visit = only(report, "visit", "S01-004/D7", "actual_date")
    assert visit.found == "2020-03-03" and visit.expected not in (None, "2020-03-03")


def test_a_visit_window_moved_is_named_against_the_protocol_schedule(victim):
    raw(victim, "update visit set window_end = '2099-01-01' where visit_code = 'D7' and "
                "subject_id = (select id from subject where screening_number = 'S02-008')")
    d = only(verify(victim), "visit", "S02-008/D7", "window_end")
    assert d.found == "2099-01-01" and "protocol schedule" in d.text()


# --- rows deleted -------------------------------------------------------------------------------
def test_an_item_value_deleted(victim):
    raw(victim, f"delete from item_value where id = "
                f"{value_id(victim, 'S01-004', 'SCR', 'vital_signs', 'PULSE')}")
    d = only(verify(victim), "item", PULSE)
    assert (d.kind, d.expected, d.found) == (MISSING, "77", None)
    assert "missing (deleted behind the app's back); the audit trail says '77'" in d.text()


def test_a_dosing_row_deleted(victim):
    [[(dose,)]] = raw(victim, "select max(d.id) from dosing_record d join subject s on "
                              "s.id = d.subject_id where s.screening_number = 'S03-009'")
    raw(victim, f"delete from dosing_record where id = {dose}")
    report = verify(victim)
    d = only(report, "dose", f"S03-009/dose/{dose}")
    assert d.kind == MISSING and "deleted behind the app's back" in d.text()
    assert report.replay.found == 1  # one line for the record, not one per field


def test_a_form_deleted_with_its_values(victim):
    raw(victim, "delete from item_value where form_instance_id in (select f.id from "
                "form_instance f join visit v on v.id = f.visit_id join subject s on "
                "s.id = v.subject_id where s.screening_number = 'S02-005' and "
                "v.visit_code = 'BL' and f.form_id = 'vital_signs')",
        "delete from form_instance where id in (select f.id from form_instance f join visit v "
        "on v.id = f.visit_id join subject s on s.id = v.subject_id where "
        "s.screening_number = 'S02-005' and v.visit_code = 'BL' and f.form_id = "
        "'vital_signs')")
    report = verify(victim)
    d = only(report, "form", "S02-005/BL/vital_signs")
    assert d.kind == MISSING and "the form was deleted" in d.text()
    assert report.replay.found == 1


def test_a_subject_deleted_leaves_one_line_and_its_orphans(victim):
    raw(victim, "delete from subject where screening_number = 'S03-009'")
    report = verify(victim)
    d = only(report, "subject", "S03-009")
    assert d.kind == MISSING and "the subject was deleted" in d.text()
    orphans = [x for x in report.replay.discrepancies if x.kind == ORPHAN]
    assert {x.entity for x in orphans} >= {"visit", "adverse_event", "dosing_record"}


def test_a_scheduled_visit_deleted(victim):
    raw(victim, "delete from visit where visit_code = 'FU30' and subject_id = "
                "(select id from subject where screening_number = 'S01-001')")
    d = only(verify(victim), "visit", "S01-001/FU30")
    assert d.kind == MISSING and "the protocol schedules this visit" in d.text()


def test_an_active_lock_removed(victim):
    raw(victim, "delete from data_lock where unlocked_at is null")
    d = only(verify(victim), "lock", "2")
    assert d.kind == MISSING and "the lock was deleted" in d.text()


def test_a_query_message_rewritten(victim):
    raw(victim, "update query_message set text = 'All fine' where id = (select min(id) from "
                "query_message where kind = 'answer')")
    d = only(verify(victim), "query", "2", "message 2")
    assert (d.expected, d.found) == ("Checked: as in the source", "All fine")


def test_an_invalidated_signature_made_valid_again(victim):
    raw(victim, "update signature set state = 'valid' where state = 'invalidated'")
    [[(sig,)]] = raw(victim, "select min(id) from signature")
    d = only(verify(victim), "signature", str(sig), "state")
    assert (d.expected, d.found) == ("invalidated", "valid")


# --- rows inserted without audit ----------------------------------------------------------------
INSERTS = {
    "item": ("insert into item_value (form_instance_id, item_id, row_index, value) select "
             "min(id), 'NIH_EXTRA', 0, '4' from form_instance",
             "item", lambda v: v.endswith("/NIH_EXTRA") or "NIH_EXTRA" in v),
    "dose": ("insert into dosing_record (subject_id, dose_date, dose_unit, instillations, "
             "nostril, route, lot, given_by, missed, missed_reason, findings, warnings, "
             "created_at, created_by, row_version) select id, '2026-01-01', 'mg', 2, 'BOTH', "
             "'IN', 'LOT-X', 'SELF', 0, '', '', '', '2026-01-01 00:00:00', 'x', 1 from subject "
             "where screening_number = 'S02-005'", "dose", lambda v: v.startswith("S02-005/")),
    "subject": ("insert into subject (study_id, site_id, screening_number, initials, "
                "birth_year, sex, arm, consent_date, enrolled_on, status, status_reason, "
                "metadata_version, row_version) select 1, id, 'S01-666', 'GH', 1950, 'M', "
                "'NSX', '2026-01-01', '2026-01-01', 'screening', '', 1, 1 from site where "
                "code = 'S01'", "subject", lambda v: v == "S01-666"),
    "adverse event": (
        "insert into adverse_event (subject_id, sequence, term, verbatim, location, "
        "start_date, ongoing, severity, grade, serious, sae_death, sae_life_threatening, "
        "sae_hospitalisation, sae_disability, sae_congenital_anomaly, sae_medically_important,"
        " action, outcome, treatment, flags, flag_text, created_at, created_by, row_version) "
        "select id, 7, 'HEADACHE', '', 'NOT_APPLICABLE', '2026-01-01', 0, 'MILD', 1, 0, 0, 0, "
        "0, 0, 0, 0, 'NONE', 'RECOVERED', '', '', '', '2026-01-01 00:00:00', 'x', 1 from "
        "subject where screening_number = 'S02-005'", "adverse_event",
        lambda v: v == "S02-005/AE7"),
    "admin account": (
        "insert into user_account (username, full_name, role, password_hash, active, "
        "failed_logins, created_at) values ('mallory', 'Mallory', 'admin', 'x', 1, 0, "
        "'2026-01-01 00:00:00')", "user", lambda v: v == "mallory"),
    "query": ("insert into query (subject_id, item_id, row_index, target, origin, rule, state, "
              "opened_at, opened_by, row_version) select id, '', 0, 'form', 'manual', '', "
              "'closed', '2026-01-01 00:00:00', 'x', 1 from subject where screening_number = "
              "'S01-001'", "query", lambda v: v.isdigit()),
}


@pytest.mark.parametrize("what", list(INSERTS))
def test_a_row_inserted_without_audit(victim, what):
    sql, entity, names = INSERTS[what]
    raw(victim, sql)
    report = verify(victim)
    found = [d for d in report.replay.discrepancies if d.entity == entity]
    assert len(found) == 1, report.text()
    assert found[0].kind == UNAUDITED and names(found[0].entity_id)
    assert "behind the app's back" in found[0].text()
    assert report.replay.found == 1


def test_a_role_raised_behind_the_apps_back(victim):
    raw(victim, "update user_account set role = 'admin' where username = 'inv'")
    d = only(verify(victim), "user", "inv", "role")
    assert (d.expected, d.found) == ("investigator", "admin")


# --- the audit trail itself ---------------------------------------------------------------------
def test_an_audit_row_deleted_is_named_by_the_chain_and_the_replay(victim):
    eid = event_id(victim, f"entity_id = '{PULSE}'")
    raw(victim, f"delete from audit_event where id = {eid}", unlock_audit=True)
    report = verify(victim)
    assert report.broken_event_id == eid + 1
    assert f"audit event #{eid} removed" in report.problem
    assert f"the chain jumps from #{eid - 1} to #{eid + 1}" in report.problem
    d = only(report, "item", PULSE)  # the value no longer has the event that wrote it
    assert (d.expected, d.found) == ("79", "77")
    assert any(f"BROKEN at event {eid + 1}" in line for line in report.lines())


def test_several_audit_rows_deleted_are_each_named(victim):
    raw(victim, "delete from audit_event where id in (10, 11, 12, 500)", unlock_audit=True)
    report = verify(victim)
    assert report.chain_broken == 2
    assert "audit events #10–#12 removed" in report.chain_breaks[0].problem
    assert "audit event #500 removed" in report.chain_breaks[1].problem


def test_the_last_audit_row_deleted_is_caught_by_the_replay(victim):
    """Deleting the newest event leaves a valid chain: only the replay can tell."""
    from crf_app.services.accounts import login
    from crf_app.services.context import open_study
    from tests.interchange.odm_helpers import PASSWORD
    from tests.tamper.scenario import correct

    study = open_study(f"sqlite:///{victim}")
    try:
        correct(login(study, "inv", PASSWORD), "S01-004", "SCR", "vital_signs", "re-counted",
                PULSE="80")
    finally:
        study.close()
    [[(last, entity_id)]] = raw(victim, "select id, entity_id from audit_event order by id "
                                        "desc limit 1")
    assert entity_id == PULSE
    raw(victim, f"delete from audit_event where id = {last}", unlock_audit=True)
    report = verify(victim)
    assert report.chain_ok
    [d] = report.replay.discrepancies
    assert (d.entity, d.entity_id, d.expected, d.found) == ("item", PULSE, "77", "80")


def test_an_audit_row_edited_is_named_by_the_chain_and_the_replay(victim):
    eid = event_id(victim, f"entity_id = '{PULSE}'")
    raw(victim, f"update audit_event set new_value = '140' where id = {eid}", unlock_audit=True)
    report = verify(victim)
    assert report.broken_event_id == eid and report.chain_broken == 1
    assert "altered" in report.problem and PULSE in report.problem
    d = only(report, "item", PULSE)
    assert (d.expected, d.found, d.event_id) == ("140", "77", eid)


def test_a_forger_who_rehashes_the_chain_is_still_caught_by_the_replay(victim):
    """Edit an event and recompute every hash after it: the chain verifies, the data does not
    match the forged history."""
    eid = event_id(victim, f"entity_id = '{PULSE}'")
    raw(victim, f"update audit_event set new_value = '140' where id = {eid}", unlock_audit=True)
    _rehash(victim, eid)
    report = verify(victim)
    assert report.chain_ok
    d = only(report, "item", PULSE)
    assert (d.expected, d.found) == ("140", "77")


def _rehash(path, start: int) -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    con = sqlite3.connect(path)
    cols = ["id", "occurred_at", "user_id", "username", "action", "entity", "entity_id",
            "field", "old_value", "new_value", "reason", "subject_id", "prev_hash", "hash"]
    [prev] = con.execute("select hash from audit_event where id < ? order by id desc limit 1",
                         (start,)).fetchone()
    for row in con.execute(f"select {', '.join(cols)} from audit_event where id >= ? "
                           "order by id", (start,)).fetchall():
        ev = SimpleNamespace(**dict(zip(cols, row, strict=True)))
        ev.occurred_at = datetime.fromisoformat(ev.occurred_at).replace(tzinfo=UTC)
        digest = compute_hash(prev, ev)
        con.execute("update audit_event set prev_hash = ?, hash = ? where id = ?",
                    (prev, digest, ev.id))
        prev = digest
    con.commit()
    con.close()
