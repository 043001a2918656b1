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
    (BEGIN IMMEDIATE) so two processes never deadlock upgrading a read lock.
    """
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    engine = create_engine(url, future=True)
    if is_sqlite:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
            dbapi_conn.isolation_level = None  # the "begin" hook below issues BEGIN itself
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
        with self._reader() as session:  # closing ends the transaction; objects stay loaded
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
