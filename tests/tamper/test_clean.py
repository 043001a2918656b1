"""No false positives: studies that only ever changed through the app verify clean."""

from __future__ import annotations

import pytest

from crf_app.integrity import verify_audit
from crf_app.services.context import open_study
from tests.tamper.scenario import raw


def verify(path):
    study = open_study(f"sqlite:///{path}")
    try:
        return verify_audit(study.db)
    finally:
        study.close()


def test_the_busy_study_verifies_clean(busy):
    report = verify(busy)
    assert report.ok, report.text()
    assert report.replay is not None and report.replay.rows > 3000
    assert report.lines()[-1].endswith("the data matches the audit trail")


@pytest.mark.parametrize("name", ["a", "b", "new"])
def test_studies_that_exchanged_odm_files_verify_clean(exchanged, name):
    report = verify(exchanged[name])
    assert report.ok, report.text()
    assert report.replay is not None and report.replay.rows > 1000


def test_the_studies_exercise_every_audited_entity(busy, exchanged):
    """Guard the scenario: the clean verdict above covers corrections, tables, queries, SDV,
    signatures, locks, AE/dose corrections, withdrawals, imports and a resolved conflict."""
    [a, b] = [dict(raw(path, "select entity || ':' || action, count(*) from audit_event "
                             "group by 1")[0]) for path in (busy, exchanged["b"])]
    for key in ("item:update", "form:update", "subject:update", "visit:update", "query:create",
                "query:update", "verification:create", "verification:update",
                "signature:create", "signature:update", "lock:create", "lock:update",
                "adverse_event:update", "dose:update", "user:login_failed",
                "user:permission_denied"):
        assert a.get(key), key
    for key in ("merge_conflict:create", "merge_conflict:resolve", "item:merge_rejected",
                "odm_file:export", "odm_file:import"):
        assert b.get(key), key
    [[(withdrawn,)]] = raw(busy, "select count(*) from subject where status = "
                                         "'withdrawn'")
    assert withdrawn == 1
