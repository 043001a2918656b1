"""Rules each found unguarded by a deliberately broken copy of the code: every one here fails
when its rule breaks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from crf_app.domain.dosing import DoseInput
from crf_app.domain.errors import ReasonRequired, StaleData
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.services import dosing as dose_svc
from crf_app.services import forms as form_svc
from crf_app.services import queries
from crf_app.services import subjects as subj_svc
from crf_app.services.audit_trail import audit_history
from crf_app.storage.audit import GENESIS_HASH, compute_hash
from tests.conftest import fixed_clock

VITALS = {"VSTIM": "09:30", "SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6",
          "WEIGHT": "80.0", "HEIGHT": "180"}
DOSE = DoseInput(date="2026-11-05", time="08:00", dose_mg="0.1", instillations="1",
                 nostril="LEFT", lot="L2026-01", given_by="SELF")


@pytest.fixture
def subject(as_role):
    coord = as_role(Role.COORDINATOR)
    coord.clock = fixed_clock()
    sid = subj_svc.enroll_subject(coord, Enrollment(
        "S01-001", "S01", "ABC", 1960, "F", "NSX", date(2026, 11, 1), date(2026, 11, 1),
        date(2026, 11, 2)))
    scr = subj_svc.subject_detail(coord, sid).visits[0].id
    return coord, sid, scr


def _auto_queries(ctx, sid):
    return [q for q in queries.list_queries(ctx, subject_id=sid) if q.origin == "auto"]


def test_an_answered_automatic_query_is_not_duplicated_and_closes_when_corrected(subject):
    coord, sid, scr = subject
    form_svc.save_form(coord, scr, "vital_signs", dict(VITALS, PULSE="130"), complete=True)
    [q] = _auto_queries(coord, sid)
    queries.answer_query(coord, q.id, "Patient was anxious; value confirmed")
    form_svc.save_form(coord, scr, "vital_signs", dict(VITALS, PULSE="131"), complete=True,
                       reason="re-measured, still high")
    [again] = _auto_queries(coord, sid)
    assert (again.id, again.state) == (q.id, "answered")
    form_svc.save_form(coord, scr, "vital_signs", dict(VITALS, PULSE="88"), complete=True,
                       reason="re-measured at rest")
    [closed] = _auto_queries(coord, sid)
    assert (closed.id, closed.state) == (q.id, "closed")


def test_a_stale_copy_is_refused_when_the_same_user_saved_in_another_window(subject):
    coord, _sid, scr = subject
    first = form_svc.open_form(coord, scr, "vital_signs")
    second = form_svc.open_form(coord, scr, "vital_signs")  # the other window
    form_svc.save_form(coord, scr, "vital_signs", VITALS, expected_version=second.row_version)
    with pytest.raises(StaleData, match="changed by coord"):
        form_svc.save_form(coord, scr, "vital_signs", dict(VITALS, PULSE="75"),
                           expected_version=first.row_version)
    assert form_svc.open_form(coord, scr, "vital_signs").raw["PULSE"] == "72"


def test_clearing_a_saved_value_needs_a_reason(subject):
    coord, _sid, scr = subject
    form_svc.save_form(coord, scr, "vital_signs", VITALS, complete=True)
    cleared = {k: v for k, v in VITALS.items() if k != "VSTIM"}
    with pytest.raises(ReasonRequired):
        form_svc.save_form(coord, scr, "vital_signs", cleared, complete=True)
    form_svc.save_form(coord, scr, "vital_signs", cleared, complete=True, reason="not recorded")
    assert "VSTIM" not in form_svc.open_form(coord, scr, "vital_signs").raw


def test_a_corrected_dose_counts_once_against_the_daily_maximum(subject):
    coord, sid, _scr = subject
    ids = [dose_svc.record_dose(coord, sid, replace(DOSE, time=t)).id
           for t in ("08:00", "12:00", "16:00", "20:00")]  # 4 = the regimen's maximum a day
    out = dose_svc.update_dose(coord, ids[-1], replace(DOSE, time="20:00", lot="L2026-02"),
                               "lot misread")
    assert [f.rule for f in out.findings] == []
    over = dose_svc.record_dose(coord, sid, replace(DOSE, time="22:00"))
    assert "instillations_above_max" in [f.rule for f in over.findings]


def test_an_aware_non_utc_time_is_stored_as_utc(subject):
    coord, _sid, scr = subject
    moscow = timezone(timedelta(hours=3))
    coord.clock = lambda: datetime(2026, 11, 24, 13, 0, tzinfo=moscow)
    form_svc.save_form(coord, scr, "vital_signs", VITALS)
    newest = audit_history(coord, limit=1)[0]
    assert newest.at == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert newest.at.utcoffset() == timedelta(0)


def test_the_audit_hash_covers_user_time_reason_and_entity_not_only_the_value():
    ev = SimpleNamespace(occurred_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC), user_id=2,
                         username="coord", action="update", entity="item",
                         entity_id="S01-001/SCR/vital_signs/PULSE", field="PULSE",
                         old_value="72", new_value="75", reason="re-measured", subject_id=1)
    base = compute_hash(GENESIS_HASH, ev)
    for field, other in (("occurred_at", datetime(2026, 11, 24, 10, 1, tzinfo=UTC)),
                         ("user_id", 3), ("username", "inv"), ("action", "create"),
                         ("entity", "form"), ("entity_id", "S01-002/SCR/vital_signs/PULSE"),
                         ("field", "TEMP"), ("old_value", "71"), ("new_value", "76"),
                         ("reason", "typo"), ("subject_id", 2)):
        assert compute_hash(GENESIS_HASH, SimpleNamespace(**{**vars(ev), field: other})) != \
            base, field
    assert compute_hash("1" * 64, ev) != base  # and the event before it
