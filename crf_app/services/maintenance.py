"""Audit-chain verification and backups."""

from __future__ import annotations

from pathlib import Path

from crf_app.domain.errors import CrfError
from crf_app.services.tamper import AuditReport, verify_everything
from crf_app.storage.engine import Database
from crf_app.storage.migrate import backup_sqlite


def verify_audit(db: Database, *, replay: bool = True) -> AuditReport:
    """Walk the hash chain of the audit trail, naming every event that does not verify, then
    replay the trail against the stored data (crf_app.services.tamper) and name every value
    changed, row deleted or row inserted behind the app's back."""
    return verify_everything(db, replay=replay)


def backup(db: Database, target: Path) -> Path:
    """A consistent copy of the database file (SQLite online backup; safe while in use).

    A server database (PostgreSQL) is refused: it is backed up on the server, with pg_dump."""
    if db.path is None:
        name = db.engine.url.database or "DATABASE"
        raise CrfError(f"backup copies SQLite database files; {name} is a "
                       f"{db.engine.dialect.name} server database, so nothing was written — "
                       "use pg_dump to back it up (e.g. pg_dump --format=custom "
                       f"--file={name}.dump {name}; restore with pg_restore)")
    target = Path(target)
    if target.is_dir():
        target = target / f"{db.path.stem}-backup.db"
    if target.resolve() == db.path.resolve():
        raise CrfError("the backup must not overwrite the database itself")
    try:
        return backup_sqlite(db.path, target)
    except OSError as exc:
        raise CrfError(f"cannot write the backup to {target}: {exc.strerror}") from None
