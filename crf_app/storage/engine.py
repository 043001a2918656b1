"""The one engine factory, and the unit of work every service runs in."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from platformdirs import user_data_dir
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from crf_app.storage import encryption

BUSY_TIMEOUT_MS = 10_000
ENV_DATABASE_URL = "CRF_DATABASE_URL"


def default_database_path() -> Path:
    """The per-user data folder's database file (platformdirs)."""
    return Path(user_data_dir("crf-app", appauthor=False)) / "crf-app.db"


def resolve_database_url(url: str | None = None) -> str:
    """`--database URL`, else `CRF_DATABASE_URL`, else SQLite in the per-user data folder."""
    if url:
        return url if "://" in url else f"sqlite:///{Path(url).resolve()}"
    env = os.environ.get(ENV_DATABASE_URL)
    if env:
        return env
    return f"sqlite:///{default_database_path()}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_engine(url: str, *, foreign_keys: bool = True) -> Engine:
    """An engine with crf-app's connection settings.

    SQLite: WAL journal, foreign keys on, a busy timeout, synchronous=FULL so a committed save
    survives power loss, and write transactions that take the write lock up front
    (BEGIN IMMEDIATE) so two processes never deadlock upgrading a read lock. A file whose
    passphrase was given (storage.encryption) is opened with SQLCipher and keyed first.

    PostgreSQL (the central server): a connection pool, and the same one-writer-at-a-time rule
    (see `_configure_postgresql`). `foreign_keys` only matters to SQLite.
    """
    backend = make_url(url).get_backend_name()
    is_sqlite = backend == "sqlite"
    if backend == "postgresql":
        return _configure_postgresql(url)
    key = encryption.passphrase_for(sqlite_path(url)) if is_sqlite else None
    engine = create_engine(url, future=True,
                           **(encryption.sqlcipher_engine_args() if key else {}))
    if is_sqlite:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
            dbapi_conn.isolation_level = None  # the "begin" hook below issues BEGIN itself
            if key:  # SQLCipher: the key must be the connection's first statement
                encryption.apply_key(dbapi_conn, key)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            mode = "DEFERRED" if conn.get_execution_options().get("crf_read_only") else "IMMEDIATE"
            conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


# pg_advisory_xact_lock key of crf-app's write lock (the bytes "crf-app\0" as a bigint)
PG_WRITE_LOCK_KEY = int.from_bytes(b"crf-app\0", "big")


def _configure_postgresql(url: str) -> Engine:
    """A PostgreSQL engine: a pool (checked before use, recycled hourly), lock and connect
    timeouts, and write transactions serialised like SQLite's.

    Every transaction that is not read-only (Database.transaction(), migrations) first takes a
    transaction-level advisory lock, held until it commits or rolls back: two writers can never
    read the same last audit hash and fork the chain, exactly as BEGIN IMMEDIATE guarantees on
    SQLite. Writers stay READ COMMITTED, so once they hold the lock they see the previous
    writer's events. Read-only units of work (Database.reading()) take no lock and run in
    REPEATABLE READ, one consistent snapshot as on SQLite. Waiting longer than the busy timeout
    for a lock fails (SQLSTATE 55P03, reported as a busy database) instead of hanging.
    """
    query = make_url(url).query
    connect_args: dict[str, object] = {}
    if "connect_timeout" not in query:
        connect_args["connect_timeout"] = 10
    if "application_name" not in query:
        connect_args["application_name"] = "crf-app"
    if "options" not in query:
        connect_args["options"] = f"-c lock_timeout={BUSY_TIMEOUT_MS}"
    engine = create_engine(url, future=True, pool_size=5, max_overflow=10, pool_timeout=30,
                           pool_pre_ping=True, pool_recycle=3600, connect_args=connect_args)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        if conn.get_execution_options().get("crf_read_only"):
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        else:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK_KEY})")

    return engine


class Database:
    """An open crf-app database: the engine and a unit-of-work factory."""

    def __init__(self, engine: Engine, url: str):
        self.engine = engine
        self.url = url
        self._writer = sessionmaker(engine, expire_on_commit=False)
        self._reader = sessionmaker(engine.execution_options(crf_read_only=True),
                                    expire_on_commit=False)
        self._local = threading.local()

    @property
    def path(self) -> Path | None:
        return sqlite_path(self.url)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction: commits at the end, rolls back everything on any error.

        Work queued with `after_transaction` while it is open runs once it has ended, whether
        it committed or rolled back (e.g. logging a refused action that rolled it back).
        """
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        if depth == 0:
            self._local.pending = []
        try:
            with self._writer() as session, session.begin():
                yield session
        except Exception as exc:  # a full disk, a read-only file, a busy database: say so
            from crf_app.storage.failures import storage_failure

            failure = storage_failure(exc, location=str(self.path or '') or None, writing=True)
            if failure is None:
                raise
            raise failure from exc
        finally:
            self._local.depth = depth
            if depth == 0:
                pending, self._local.pending = self._local.pending, []
                for callback in pending:
                    callback()

    def after_transaction(self, callback: Callable[[], None]) -> None:
        """Run `callback` now, or after the transaction open in this thread has ended."""
        if getattr(self._local, "depth", 0):
            self._local.pending.append(callback)
        else:
            callback()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only unit of work (no write lock taken)."""
        try:
            with self._reader() as session:  # closing ends the transaction; objects stay loaded
                yield session
        except Exception as exc:  # a vanished drive, an I/O error, a damaged file: say so
            from crf_app.storage.failures import storage_failure

            failure = storage_failure(exc, location=str(self.path or '') or None, writing=False)
            if failure is None:
                raise
            raise failure from exc

    def dispose(self) -> None:
        self.engine.dispose()
