"""Audit-chain verification and backups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crf_app.domain.errors import CrfError
from crf_app.storage.audit import verify_chain
from crf_app.storage.engine import Database
from crf_app.storage.migrate import backup_sqlite


@dataclass(frozen=True)
class AuditReport:
    events_checked: int
    broken_event_id: int | None
    problem: str

    @property
    def ok(self) -> bool:
        return self.broken_event_id is None


def verify_audit(db: Database) -> AuditReport:
    """Walk the hash chain of the audit trail; name the first event that does not verify."""
    with db.reading() as s:
        checked, brk = verify_chain(s)
    if brk is None:
        return AuditReport(checked, None, "")
    return AuditReport(checked, brk.event_id, brk.problem)


def backup(db: Database, target: Path) -> Path:
    """A consistent copy of the database file (SQLite online backup; safe while in use)."""
    if db.path is None:
        raise CrfError("backup copies SQLite files; back up a server database with its own "
                       "tools (pg_dump)")
    target = Path(target)
    if target.is_dir():
        target = target / f"{db.path.stem}-backup.db"
    if target.resolve() == db.path.resolve():
        raise CrfError("the backup must not overwrite the database itself")
    try:
        return backup_sqlite(db.path, target)
    except OSError as exc:
        raise CrfError(f"cannot write the backup to {target}: {exc.strerror}") from None
