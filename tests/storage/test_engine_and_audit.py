import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from crf_app.integrity import verify_audit
from crf_app.storage.audit import Actor, AuditWriter, verify_chain
from crf_app.storage.engine import (
    BUSY_TIMEOUT_MS,
    PG_WRITE_LOCK_KEY,
    default_database_path,
    resolve_database_url,
)


def _dialect(study) -> str:
    return study.db.engine.dialect.name


@pytest.mark.sqlite_only
def test_sqlite_pragmas(study):
    with study.db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


def _advisory_locks(conn) -> int:
    return conn.execute(text(
        "select count(*) from pg_locks where locktype = 'advisory' and granted "
        "and pid = pg_backend_pid()")).scalar()


def test_writers_lock_up_front_and_readers_do_not(study):
    """A write transaction holds the database's write lock from its first statement (SQLite:
    BEGIN IMMEDIATE; PostgreSQL: the advisory lock); a read-only one takes none."""
    if _dialect(study) == "sqlite":
        with study.db.transaction() as s:
            s.execute(text("select 1"))
            other = sqlite3.connect(study.db.path, timeout=0)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
        return
    with study.db.engine.connect() as conn:
        assert conn.execute(text("select setting from pg_settings "
                                 "where name = 'lock_timeout'")).scalar() == str(BUSY_TIMEOUT_MS)
        assert conn.execute(text("show application_name")).scalar() == "crf-app"
    assert study.db.engine.pool.size() >= 2
    with study.db.transaction() as s:
        key = s.execute(text("select (classid::bigint << 32) | objid::bigint from pg_locks "
                             "where locktype = 'advisory' and granted "
                             "and pid = pg_backend_pid()")).scalar()
        assert key == PG_WRITE_LOCK_KEY
    with study.db.reading() as s:
        assert _advisory_locks(s) == 0
        assert s.execute(text("show transaction_isolation")).scalar() == "repeatable read"


def test_concurrent_writers_never_fork_the_audit_chain(study):
    """Writers in several threads (each its own connection) append to one unbroken chain."""
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(6):
                with study.db.transaction() as s:
                    AuditWriter(s, Actor(None, f"writer{n}")).record(
                        "test", "thread", n, field="step", new=i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with study.db.reading() as s:
        before, brk = verify_chain(s)
    assert brk is None
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with study.db.reading() as s:
        checked, brk = verify_chain(s)
    assert brk is None and checked == before + 24


def test_database_location(monkeypatch, tmp_path):
    assert resolve_database_url().endswith(str(default_database_path()))
    assert "crf-app" in str(default_database_path())
    assert str(default_database_path()).startswith(str(Path.home()))
    monkeypatch.setenv("CRF_DATABASE_URL", "sqlite:////elsewhere/x.db")
    assert resolve_database_url() == "sqlite:////elsewhere/x.db"
    assert resolve_database_url(str(tmp_path / "a.db")) == f"sqlite:///{tmp_path / 'a.db'}"
    assert resolve_database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize("sql", ["update audit_event set new_value = 'x'",
                                 "delete from audit_event"])
def test_audit_trail_is_append_only(study, sql):
    with pytest.raises(DatabaseError, match="append-only"), study.db.transaction() as s:
        s.execute(text(sql))
    assert verify_audit(study.db).ok


def test_audit_trail_cannot_be_emptied_at_once(study):
    """PostgreSQL's TRUNCATE fires no row trigger: a statement trigger refuses it too."""
    sql = "delete from audit_event" if _dialect(study) == "sqlite" else "truncate audit_event"
    with pytest.raises(DatabaseError, match="append-only"), study.db.transaction() as s:
        s.execute(text(sql))
    assert verify_audit(study.db).ok


def _tamper(study, *statements):
    """Change the audit trail behind the app's back (the append-only triggers removed)."""
    if _dialect(study) == "sqlite":
        con = sqlite3.connect(study.db.path)
        con.execute("drop trigger audit_event_no_update")
        con.execute("drop trigger audit_event_no_delete")
        for st in statements:
            con.execute(st)
        con.commit()
        con.close()
        return
    with study.db.engine.connect() as conn:  # as the owner of the table could
        conn.execute(text("alter table audit_event disable trigger audit_event_no_change"))
        for st in statements:
            conn.execute(text(st))
        conn.execute(text("alter table audit_event enable trigger audit_event_no_change"))
        conn.commit()


def test_verify_audit_names_an_altered_event(study):
    report = verify_audit(study.db)
    assert report.ok and report.events_checked > 5
    _tamper(study, "update audit_event set new_value = 'Mallory' where id = 4")
    report = verify_audit(study.db)
    assert (report.broken_event_id, report.events_checked) == (4, 3)
    assert "altered" in report.problem


def test_verify_audit_names_a_removed_event(study):
    _tamper(study, "delete from audit_event where id = 3")
    report = verify_audit(study.db)
    assert report.broken_event_id == 4 and "removed" in report.problem


def test_a_database_that_cannot_be_opened_is_refused_without_its_password(db_url, tmp_path):
    from sqlalchemy.engine import make_url

    from crf_app.domain.errors import DatabaseRefused
    from crf_app.storage.migrate import open_database

    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        (tmp_path / "folder.db").mkdir()
        bad = f"sqlite:///{tmp_path / 'folder.db'}"
    else:  # a database that does not exist on the server
        bad = url.set(database=f"{url.database}_missing").render_as_string(hide_password=False)
    with pytest.raises(DatabaseRefused) as refused:
        open_database(bad)
    if url.password:  # a server's URL may be named, its password never
        assert f":{url.password}@" not in str(refused.value)
