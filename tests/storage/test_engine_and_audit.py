import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from crf_app.services.maintenance import verify_audit
from crf_app.storage.engine import default_database_path, resolve_database_url


def test_sqlite_pragmas(study):
    with study.db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


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


def _tamper(path, *statements):
    con = sqlite3.connect(path)
    con.execute("drop trigger audit_event_no_update")
    con.execute("drop trigger audit_event_no_delete")
    for st in statements:
        con.execute(st)
    con.commit()
    con.close()


def test_verify_audit_names_an_altered_event(study):
    report = verify_audit(study.db)
    assert report.ok and report.events_checked > 5
    _tamper(study.db.path, "update audit_event set new_value = 'Mallory' where id = 4")
    report = verify_audit(study.db)
    assert (report.broken_event_id, report.events_checked) == (4, 3)
    assert "altered" in report.problem


def test_verify_audit_names_a_removed_event(study):
    _tamper(study.db.path, "delete from audit_event where id = 3")
    report = verify_audit(study.db)
    assert report.broken_event_id == 4 and "removed" in report.problem
