"""Plain messages for the database failures a user can meet: a full disk, a read-only file, an
input/output error, a database kept locked by another program, a damaged file.

`Database.transaction()` and `Database.reading()` (crf_app.storage.engine) pass every driver
error through `storage_failure`; the ones named here become a `StorageFailed` (a
`DatabaseRefused`) whose message says what happened, that nothing was saved, and what to do.
Errors that are bugs rather than circumstances (integrity, programming errors) pass unchanged.

SQLite errors are told apart by their result code (`sqlite3.Error.sqlite_errorname`, Python
3.11+) and, failing that, by their text; PostgreSQL errors by their SQLSTATE.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from crf_app.domain.errors import StorageFailed

# Result codes (extended codes start with these names: SQLITE_IOERR_WRITE, SQLITE_BUSY_SNAPSHOT…)
_SQLITE_CODES: tuple[tuple[str, str], ...] = (
    ("SQLITE_FULL", StorageFailed.DISK_FULL),
    ("SQLITE_READONLY", StorageFailed.READ_ONLY),
    ("SQLITE_IOERR", StorageFailed.IO_ERROR),
    ("SQLITE_BUSY", StorageFailed.BUSY),
    ("SQLITE_LOCKED", StorageFailed.BUSY),
    ("SQLITE_CORRUPT", StorageFailed.DAMAGED),
    ("SQLITE_NOTADB", StorageFailed.DAMAGED),
    ("SQLITE_CANTOPEN", StorageFailed.CANNOT_OPEN),
)
# The same, by the text SQLite gives (older Pythons, other drivers).
_SQLITE_TEXTS: tuple[tuple[str, str], ...] = (
    ("database or disk is full", StorageFailed.DISK_FULL),
    ("readonly database", StorageFailed.READ_ONLY),
    ("read-only", StorageFailed.READ_ONLY),
    ("disk i/o error", StorageFailed.IO_ERROR),
    ("database is locked", StorageFailed.BUSY),
    ("database table is locked", StorageFailed.BUSY),
    ("malformed", StorageFailed.DAMAGED),
    ("file is not a database", StorageFailed.DAMAGED),
    ("unable to open database file", StorageFailed.CANNOT_OPEN),
)
# PostgreSQL SQLSTATEs (exact codes first, then classes).
_PG_STATES: dict[str, str] = {
    "53100": StorageFailed.DISK_FULL,
    "25006": StorageFailed.READ_ONLY,
    "58030": StorageFailed.IO_ERROR,
    "55P03": StorageFailed.BUSY,
    "40P01": StorageFailed.BUSY,
    "57014": StorageFailed.BUSY,
    "XX001": StorageFailed.DAMAGED,
    "XX002": StorageFailed.DAMAGED,
}
_PG_CLASSES: dict[str, str] = {"08": StorageFailed.UNAVAILABLE, "57": StorageFailed.UNAVAILABLE}

# Driver errors that mean a bug or a broken rule, never a circumstance: they pass unchanged.
_NOT_CIRCUMSTANCES = (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.InterfaceError,
                      sa_exc.DataError, sa_exc.NotSupportedError, sqlite3.IntegrityError,
                      sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError,
                      sqlite3.NotSupportedError)


def failure_cause(exc: BaseException) -> str | None:
    """The StorageFailed cause of a driver error, or None when it is not one of those."""
    if isinstance(exc, _NOT_CIRCUMSTANCES):
        return None
    if isinstance(exc, sa_exc.DBAPIError):
        orig: BaseException = exc.orig if exc.orig is not None else exc
        if isinstance(orig, _NOT_CIRCUMSTANCES):
            return None
    elif isinstance(exc, sqlite3.DatabaseError):
        orig = exc
    else:
        return None
    name = str(getattr(orig, "sqlite_errorname", "") or "")
    for prefix, cause in _SQLITE_CODES:
        if name.startswith(prefix):
            return cause
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str) and state:
        if state in _PG_STATES:
            return _PG_STATES[state]
        if state[:2] in _PG_CLASSES:
            return _PG_CLASSES[state[:2]]
    text = str(orig).lower()
    for fragment, cause in _SQLITE_TEXTS:
        if fragment in text:
            return cause
    operational = isinstance(exc, sa_exc.OperationalError | sqlite3.OperationalError) or (
        type(orig).__name__ == "OperationalError")  # another driver's (sqlcipher3, psycopg)
    if not operational:
        return None
    if not state and type(orig).__module__.startswith("psycopg"):
        return StorageFailed.UNAVAILABLE  # psycopg without a SQLSTATE: no server to talk to
    return StorageFailed.OTHER


def _detail(exc: BaseException) -> str:
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    return " ".join(str(orig).split())[:200] or type(orig).__name__


def _busy_seconds() -> str:
    from crf_app.storage.engine import BUSY_TIMEOUT_MS

    seconds = BUSY_TIMEOUT_MS / 1000
    return f"{seconds:g} second" + ("" if seconds == 1 else "s")


def failure_message(cause: str, *, location: str | None = None, writing: bool = True,
                    detail: str = "") -> str:
    """The plain message for a cause: what happened, what it did to the data, what to do."""
    where = f"The database file {location}" if location else "The database"
    kept = " — what you typed is kept" if writing else ""
    outcome = "nothing was saved" if writing else "the data could not be read"
    again = "save again" if writing else "try again"
    if cause == StorageFailed.DISK_FULL:
        return f"The disk is full: {outcome}; free some space on the disk and {again}{kept}."
    if cause == StorageFailed.READ_ONLY:
        return (f"{where} is read-only (a write-protected or read-only drive or folder, or no "
                f"permission to write): {outcome}; copy the database to a writable folder and "
                f"open the copy{kept}.")
    if cause == StorageFailed.IO_ERROR:
        return (f"The disk reported an input/output error (the drive may have been removed or "
                f"be failing): {outcome}; check the drive and {again}{kept}. Make a backup of "
                "the database as soon as the drive works.")
    if cause == StorageFailed.BUSY:
        return (f"The database is busy: another crf-app or another program has kept it locked "
                f"for more than {_busy_seconds()}: {outcome}; wait a moment and {again}{kept}.")
    if cause == StorageFailed.DAMAGED:
        return (f"{where} is damaged ({detail or 'SQLite found it inconsistent'}): {outcome}; "
                f"stop using it and restore it from a backup{kept}.")
    if cause == StorageFailed.CANNOT_OPEN:
        return (f"{where} cannot be opened (was it moved, renamed, or its drive removed?): "
                f"{outcome}; reconnect the drive and {again}{kept}.")
    if cause == StorageFailed.UNAVAILABLE:
        return (f"The database server cannot be reached ({detail or 'no connection'}): "
                f"{outcome}; check the network or the server and {again}{kept}.")
    return f"The database refused the operation ({detail or 'unknown error'}): {outcome}{kept}."


def storage_failure(exc: BaseException, *, location: str | None = None,
                    writing: bool = True) -> StorageFailed | None:
    """The StorageFailed to raise instead of a driver error, or None to let it through."""
    cause = failure_cause(exc)
    if cause is None:
        return None
    return StorageFailed(failure_message(cause, location=location, writing=writing,
                                         detail=_detail(exc)), cause)


@contextmanager
def translated(*, location: str | None = None, writing: bool = True) -> Iterator[None]:
    """Raise a StorageFailed (chained to the driver error) for the failures named here."""
    try:
        yield
    except (sa_exc.DBAPIError, sqlite3.DatabaseError) as exc:
        failure = storage_failure(exc, location=location, writing=writing)
        if failure is None:
            raise
        raise failure from exc
