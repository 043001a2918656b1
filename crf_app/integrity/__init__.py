"""Integrity checks over a whole study: the audit chain walked and replayed against the data.

Above the user-action services (it reads the study as stored, not as a user may see it) and
below the GUI and the CLI, which offer it as **File → Verify audit trail** and
`crf-app verify-audit`."""

from __future__ import annotations

from crf_app.integrity.replay import AuditReport, verify_everything
from crf_app.storage.engine import Database

__all__ = ["AuditReport", "verify_audit"]


def verify_audit(db: Database, *, replay: bool = True) -> AuditReport:
    """Walk the hash chain of the audit trail, naming every event that does not verify, then
    replay the trail against the stored data (crf_app.integrity.replay) and name every value
    changed, row deleted or row inserted behind the app's back."""
    return verify_everything(db, replay=replay)
