"""Opening a database: check it, back it up, upgrade it to the app's schema (Alembic)."""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import DatabaseError as SADatabaseError

from crf_app.domain.errors import DatabaseRefused, PassphraseRequired, StorageFailed
from crf_app.storage import encryption
from crf_app.storage.engine import BUSY_TIMEOUT_MS, Database, make_engine, sqlite_path
from crf_app.storage.failures import storage_failure

SQLITE_MAGIC = b"SQLite format 3\x00"
log = logging.getLogger(__name__)


def migrations_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision, read without taking the write lock (so opening the app
    does not wait for another process's write)."""
    with engine.connect() as conn:
        conn.execution_options(crf_read_only=True)  # BEGIN DEFERRED (engine.make_engine)
        return MigrationContext.configure(conn).get_current_revision()


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not a SQLite database, or a damaged one, without changing it."""
    if not path.exists():
        return
    if path.is_dir():
        raise DatabaseRefused(f"{path} is a folder, not a crf-app database file")
    with path.open("rb") as fh:
        header = fh.read(16)
    if path.stat().st_size and header != SQLITE_MAGIC:
        if encryption.looks_encrypted(path):
            _check_encrypted_file(path)
            return
        raise DatabaseRefused(f"{path} is not a SQLite database (its header is wrong); "
                              "nothing was changed")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = con.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise DatabaseRefused(f"{path} is damaged and cannot be read ({exc}); nothing was "
                              "changed — restore it from a backup") from None
    if result != "ok":
        raise DatabaseRefused(f"{path} failed SQLite's integrity check ({result}); nothing was "
                              "changed — restore it from a backup")


def _check_encrypted_file(path: Path) -> None:
    """An encrypted (SQLCipher) file: its passphrase must be known and open it."""
    key = encryption.passphrase_for(path)
    if key is None:
        raise PassphraseRequired(
            f"{path} is encrypted (or is not a SQLite database): give its passphrase — the app "
            f"asks for it at start, scripts set ${encryption.ENV_PASSPHRASE}; nothing was "
            "changed")
    result = encryption.quick_check(path, key)
    if result != "ok":
        raise DatabaseRefused(f"{path} failed SQLite's integrity check ({result}); nothing was "
                              "changed — restore it from a backup")


def backup_sqlite(source: Path, target: Path) -> Path:
    """Copy a live SQLite database with the online backup API (consistent even in WAL mode).

    An encrypted database is copied with SQLCipher's export, encrypted with the same key."""
    key = encryption.passphrase_for(source)
    if key is not None:
        return encryption.export_copy(source, target, source_key=key, target_key=key)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    for stale in (tmp, tmp.with_name(tmp.name + "-journal")):  # left by a killed backup
        stale.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    tmp.replace(target)
    return target


def backup_path_for(path: Path, revision: str | None) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return path.with_name(f"{path.name}.{stamp}.rev-{revision or 'none'}.bak")


# --- read-only files ------------------------------------------------------------------------
def check_writable(path: Path) -> None:
    """Refuse, in plain words, a database file (or its folder) that cannot be written.

    crf-app writes on every login and save (and SQLite keeps its -wal and -shm files beside
    the database), so a file on a write-protected drive or in a read-only folder is refused
    before anything is tried. (As root, permissions allow every write; a read-only drive
    still refuses, and a write that fails later is reported by Database.transaction.)"""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folder make_engine creates in
        folder = folder.parent
    if path.exists() and not os.access(path, os.W_OK):
        raise StorageFailed(
            f"The database file {path} is read-only (a write-protected or read-only drive, or "
            "no permission to write to it): crf-app writes to the database on every login and "
            "save, so it cannot open it; nothing was changed — copy the database to a writable "
            "folder and open the copy", StorageFailed.READ_ONLY)
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise StorageFailed(
            f"The folder {folder} that holds (or would hold) the database is read-only (a "
            "write-protected or read-only drive, or no permission to write): SQLite keeps its "
            "journal files beside the database, so crf-app cannot open it there; nothing was "
            "changed — copy the database to a writable folder and open the copy",
            StorageFailed.READ_ONLY)


# --- upgrades interrupted by a crash -----------------------------------------------------------
# Alembic runs the whole upgrade in one transaction (migrations/env.py, transactional_ddl), so a
# crash leaves the old schema or the new one. Belt and braces: while an upgrade runs, a marker
# file beside the database names the revisions and the backup taken just before; opening a
# database whose marker is still there checks it and, if it is neither the old schema as backed
# up nor the new one (or is damaged), puts the backup back before upgrading again.
UPGRADE_MARKER_SUFFIX = ".upgrading"

_CAUSE_TEXT = {
    StorageFailed.DISK_FULL: "the disk is full",
    StorageFailed.READ_ONLY: "the database file is read-only",
    StorageFailed.IO_ERROR: "the disk reported an input/output error",
    StorageFailed.BUSY: "another program kept the database locked",
    StorageFailed.DAMAGED: "the database file is damaged",
    StorageFailed.CANNOT_OPEN: "the database file could not be opened",
}


def upgrade_marker_path(path: Path) -> Path:
    """The marker file that exists beside `path` while an upgrade of it runs."""
    return path.with_name(path.name + UPGRADE_MARKER_SUFFIX)


def _fsync_folder(folder: Path) -> None:
    """Make renames and deletions in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_marker(path: Path, info: dict) -> None:
    marker = upgrade_marker_path(path)
    tmp = marker.with_name(marker.name + ".part")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(info, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, marker)
    _fsync_folder(path.parent)  # the marker, and the backup renamed just before it


def _clear_marker(path: Path) -> None:
    upgrade_marker_path(path).unlink(missing_ok=True)
    _fsync_folder(path.parent)


@contextmanager
def _upgrade_marked(path: Path, old: str | None, new: str, backup: Path) -> Iterator[None]:
    """The marker exists while the body runs; it stays if the body fails (checked next open)."""
    _write_marker(path, {"from": old, "to": new, "backup": str(backup),
                         "started": datetime.now(UTC).isoformat(timespec="seconds")})
    yield
    _clear_marker(path)


def _schema_state(path: Path) -> tuple[bool, str | None, list[tuple]]:
    """(passes quick_check, alembic revision, schema rows) of a SQLite file; (False, None, [])
    when SQLite cannot read it. A read-write connection, so a crashed writer's WAL is dealt
    with first."""
    try:
        con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            ok = con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            schema = sorted(con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                        "WHERE name NOT LIKE 'sqlite_%'").fetchall())
            revision = None
            if any(row[0] == "table" and row[1] == "alembic_version" for row in schema):
                found = con.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = found[0] if found else None
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False, None, []
    return ok, revision, schema


def restore_sqlite(source: Path, target: Path) -> None:
    """Put a backup's content back into the database file `target`.

    Through SQLite's online backup API, in one transaction: a crash while restoring leaves
    `target` as it was. A target too damaged for SQLite to write is replaced as a file."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        try:
            dst = sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                src.backup(dst)
                dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                dst.close()
            return
        except sqlite3.DatabaseError:
            pass
    finally:
        src.close()
    copy = backup_sqlite(source, target.with_name(target.name + ".restoring"))
    for journal in ("-wal", "-shm", "-journal"):
        Path(f"{target}{journal}").unlink(missing_ok=True)
    os.replace(copy, target)
    _fsync_folder(target.parent)


def recover_interrupted_upgrade(path: Path) -> str | None:
    """After an upgrade of `path` was interrupted (the marker is still there): keep the
    database if it is the old schema as backed up or the new one; otherwise restore the backup
    taken before the upgrade. Returns the message to show when it restored, else None."""
    marker = upgrade_marker_path(path)
    if not marker.exists():
        return None
    if not path.exists():  # the database itself was deleted since: nothing to recover
        _clear_marker(path)
        return None
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        old, new, backup = info["from"], info["to"], Path(info["backup"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DatabaseRefused(
            f"an upgrade of {path} was interrupted and its record {marker} cannot be read; "
            "nothing was changed — restore the database from its newest backup (the .bak "
            f"files beside it), then delete {marker.name}") from None
    ok, revision, schema = _schema_state(path)
    if ok and revision == new:  # the upgrade committed; only the marker was left
        _clear_marker(path)
        return None
    untouched = ok and revision == old and (
        not backup.exists() or _schema_state(backup)[2] == schema)
    if untouched:  # the upgrade rolled back whole: the old schema, as backed up
        _clear_marker(path)
        return None
    state = f"schema revision {revision}" if ok else "a damaged file"
    if not backup.exists():
        raise DatabaseRefused(
            f"an upgrade of {path} to schema revision {new} was interrupted and left "
            f"{state}, and the backup taken before it ({backup}) is missing; nothing was "
            "changed — restore the database from a backup")
    backup_ok, backup_revision, _ = _schema_state(backup)
    if not backup_ok or backup_revision != old:
        raise DatabaseRefused(
            f"an upgrade of {path} to schema revision {new} was interrupted and left {state}, "
            f"and the backup taken before it ({backup}) is not usable; nothing was changed — "
            "restore the database from another backup")
    restore_sqlite(backup, path)
    _clear_marker(path)
    message = (f"The upgrade of {path} was interrupted (crf-app was closed or the computer "
               f"stopped while it ran) and left {state}. The database was restored "
               f"automatically from the backup taken just before the upgrade ({backup.name}, "
               f"schema revision {old}); nothing saved before the upgrade was lost, and the "
               "upgrade runs again now.")
    log.warning(message)
    return message


def shown_url(url: str) -> str:
    """A database URL fit for a message: a server's password is never shown."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_database(url: str, *, upgrade: bool = True) -> Database:
    """Open (creating if needed) a crf-app database and bring its schema to this app's head.

    A SQLite file that already holds data is first backed up beside itself. A database whose
    schema is newer than this app is refused and left untouched. A read-only file is refused
    in plain words. An upgrade interrupted by a crash is detected and, if it left the file
    neither old nor new, the file is restored from its backup and upgraded again: the message
    saying so is logged and kept in the returned database's `notices`.
    """
    path = sqlite_path(url)
    notices: list[str] = []
    if path is not None:
        check_writable(path)
        restored = recover_interrupted_upgrade(path)
        if restored:
            notices.append(restored)
        check_sqlite_file(path)
    head = head_revision()
    engine = make_engine(url)
    try:
        try:
            current = current_revision(engine)
        except (SADatabaseError, OperationalError) as exc:
            failure = storage_failure(exc, location=str(path or "") or None, writing=False)
            if failure is not None and failure.cause != StorageFailed.OTHER:
                raise failure from None
            raise DatabaseRefused(f"cannot open the database {shown_url(url)}: "
                                  f"{exc.orig}") from None
        if current is not None:
            known = {rev.revision for rev in script_directory().walk_revisions()}
            if current not in known:
                raise DatabaseRefused(
                    f"the database {path or shown_url(url)} was written by a newer crf-app (schema "
                    f"revision {current}; this app knows up to {head}); it was left untouched "
                    "— install the newer crf-app to open it")
        if upgrade and current != head:
            has_tables = bool(inspect(engine).get_table_names())
            if path is not None and path.exists() and has_tables:
                backup = _backup_before_upgrade(path, current)
                with _upgrade_marked(path, current, head, backup):
                    _upgrade_explained(engine, path, backup)
            else:
                upgrade_to(engine, "head")
    except BaseException:
        engine.dispose()
        raise
    db = Database(engine, url)
    db.notices = notices  # type: ignore[attr-defined]
    return db


def _backup_before_upgrade(path: Path, revision: str | None) -> Path:
    target = backup_path_for(path, revision)
    try:
        return backup_sqlite(path, target)
    except (OSError, sqlite3.Error) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        number = getattr(exc, "errno", None)
        if number == errno.ENOSPC or "disk is full" in detail:
            cause = StorageFailed.DISK_FULL
        elif number in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in detail:
            cause = StorageFailed.READ_ONLY
        else:
            cause = StorageFailed.OTHER
        raise StorageFailed(
            f"crf-app must back up {path} before upgrading it to this version, and the backup "
            f"{target.name} could not be written ({detail}); nothing was changed — free some "
            "space on the disk (or make the folder writable) and open it again", cause,
        ) from None


def _upgrade_explained(engine: Engine, path: Path, backup: Path) -> None:
    """Upgrade to head; a full disk, a read-only file… is reported plainly (rolled back)."""
    try:
        upgrade_to(engine, "head")
    except (SADatabaseError, OperationalError, sqlite3.DatabaseError) as exc:
        failure = storage_failure(exc, location=str(path), writing=True)
        if failure is None:
            raise
        why = _CAUSE_TEXT.get(failure.cause,
                              f"the database refused it ({getattr(exc, 'orig', None) or exc})")
        raise StorageFailed(
            f"{path} could not be upgraded to this version of crf-app because {why}; the "
            f"upgrade was rolled back and the database is unchanged (a backup is at "
            f"{backup.name})", failure.cause) from exc


def upgrade_to(engine: Engine, revision: str) -> None:
    """Run Alembic upgrades on this engine's database (foreign keys off while tables move)."""
    _run(engine, lambda cfg: command.upgrade(cfg, revision))


def downgrade_to(engine: Engine, revision: str) -> None:
    _run(engine, lambda cfg: command.downgrade(cfg, revision))


def _run(engine: Engine, action) -> None:
    mig_engine = make_engine(str(engine.url.render_as_string(hide_password=False)),
                             foreign_keys=False)
    try:
        with mig_engine.connect() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            action(cfg)
            conn.commit()
    finally:
        mig_engine.dispose()
