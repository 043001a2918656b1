"""Opening a database: check it, back it up, upgrade it to the app's schema (Alembic)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError

from crf_app.domain.errors import DatabaseRefused
from crf_app.storage.engine import Database, make_engine, sqlite_path

SQLITE_MAGIC = b"SQLite format 3\x00"


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
    with engine.connect() as conn:
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


def backup_sqlite(source: Path, target: Path) -> Path:
    """Copy a live SQLite database with the online backup API (consistent even in WAL mode)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
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


def open_database(url: str, *, upgrade: bool = True) -> Database:
    """Open (creating if needed) a crf-app database and bring its schema to this app's head.

    A SQLite file that already holds data is first backed up beside itself. A database whose
    schema is newer than this app is refused and left untouched.
    """
    path = sqlite_path(url)
    if path is not None:
        check_sqlite_file(path)
    head = head_revision()
    engine = make_engine(url)
    try:
        try:
            current = current_revision(engine)
        except (SADatabaseError, OperationalError) as exc:
            raise DatabaseRefused(f"cannot open the database {url}: {exc.orig}") from None
        if current is not None:
            known = {rev.revision for rev in script_directory().walk_revisions()}
            if current not in known:
                raise DatabaseRefused(
                    f"the database {path or url} was written by a newer crf-app (schema "
                    f"revision {current}; this app knows up to {head}); it was left untouched "
                    "— install the newer crf-app to open it")
        if upgrade and current != head:
            has_tables = bool(inspect(engine).get_table_names())
            if path is not None and path.exists() and has_tables:
                backup_sqlite(path, backup_path_for(path, current))
            upgrade_to(engine, "head")
    except BaseException:
        engine.dispose()
        raise
    return Database(engine, url)


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
