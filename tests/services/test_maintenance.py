"""Backups: a SQLite file is copied; a server database is refused (pg_dump backs it up)."""

import sqlite3

import pytest

from crf_app.domain.errors import CrfError
from crf_app.services.maintenance import backup


def test_backup_copies_a_sqlite_file_and_refuses_a_server_database(study, tmp_path):
    target = tmp_path / "backups"
    target.mkdir()
    if study.db.path is None:  # PostgreSQL: nothing is written, pg_dump is named
        with pytest.raises(CrfError, match="pg_dump"):
            backup(study.db, target)
        assert list(target.iterdir()) == []
        return
    out = backup(study.db, target)
    assert out.parent == target
    con = sqlite3.connect(out)
    try:
        assert con.execute("select oid from study").fetchall() == [(study.oid,)]
        assert con.execute("select count(*) from audit_event").fetchone()[0] > 5
    finally:
        con.close()
    with pytest.raises(CrfError, match="overwrite"):
        backup(study.db, study.db.path)
