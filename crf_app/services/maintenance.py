"""Backups (the audit-chain verification is crf_app.integrity.verify_audit)."""

from __future__ import annotations

from pathlib import Path

from crf_app.domain.errors import CrfError
from crf_app.storage.engine import Database
from crf_app.storage.migrate import backup_sqlite


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
