"""Models and migrations agree; history is linear; upgrades keep data; bad files are refused."""

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from crf_app.domain.errors import DatabaseRefused
from crf_app.storage.engine import make_engine
from crf_app.storage.migrate import (
    current_revision,
    downgrade_to,
    head_revision,
    open_database,
    script_directory,
    upgrade_to,
)
from crf_app.storage.models import Base


def test_history_is_linear():
    revisions = list(script_directory().walk_revisions())
    assert len(script_directory().get_heads()) == 1
    bases = [r for r in revisions if r.down_revision is None]
    assert len(bases) == 1
    for r in revisions:
        assert not isinstance(r.down_revision, tuple | list), f"merge revision {r.revision}"


def _schema_diff(engine):
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)


def test_models_and_migrations_agree(db_url):
    db = open_database(db_url)
    diff = _schema_diff(db.engine)
    db.dispose()
    assert diff == []


def _append_only_guards(conn) -> set[str]:
    """The triggers (and PostgreSQL's trigger function) that make the audit trail append-only."""
    if conn.dialect.name == "sqlite":
        return {r[0] for r in conn.execute(text(
            "select name from sqlite_master where type = 'trigger'"))}
    return {r[0] for r in conn.execute(text(
        "select tgname from pg_trigger where not tgisinternal "
        "union select proname from pg_proc where proname = 'audit_event_append_only'"))}


def test_downgrade_to_nothing_and_upgrade_again(db_url):
    """Every revision's downgrade undoes it (tables, indexes, triggers), on either backend."""
    db = open_database(db_url)
    with db.engine.connect() as conn:
        assert _append_only_guards(conn)
    downgrade_to(db.engine, "base")
    assert current_revision(db.engine) is None
    with db.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        assert _append_only_guards(conn) == set()
    upgrade_to(db.engine, "head")
    assert current_revision(db.engine) == head_revision()
    assert _schema_diff(db.engine) == []
    db.dispose()


def _row_counts(where):
    """Row counts and every row of every table, read as stored (a SQLite path or a URL)."""
    url = where if isinstance(where, str) else f"sqlite:///{where}"
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tables = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
            counts = {t: conn.execute(text(f'select count(*) from "{t}"')).scalar()
                      for t in tables}
            dump = {t: conn.execute(text(f'select * from "{t}" order by 1')).fetchall()
                    for t in tables}
    finally:
        engine.dispose()
    return counts, dump


def test_downgrade_and_upgrade_each_step_keeps_every_row(study, tmp_path, coordinator):
    from datetime import date

    from crf_app.domain.subjects import Enrollment
    from crf_app.services.subjects import enroll_subject

    enroll_subject(coordinator, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                           date(2026, 11, 1), date(2026, 11, 1),
                                           date(2026, 11, 2)))
    url = study.db.url
    study.close()
    counts_head, dump_head = _row_counts(url)
    assert counts_head["subject"] == 1 and counts_head["audit_event"] > 10
    engine = make_engine(url)
    revisions = [r.revision for r in reversed(list(script_directory().walk_revisions()))]
    for rev in reversed(revisions[1:]):
        previous = script_directory().get_revision(rev).down_revision
        downgrade_to(engine, previous)
        assert current_revision(engine) == previous
        counts_down, dump_down = _row_counts(url)
        for table in counts_down:  # every table that survives the downgrade keeps its rows
            assert dump_down[table] == dump_head[table], table
        upgrade_to(engine, rev)
        downgrade_to(engine, previous)
        upgrade_to(engine, "head")
        _counts_up, dump_up = _row_counts(url)
        for table in counts_down:
            assert dump_up[table] == dump_head[table], table
    engine.dispose()


@pytest.mark.sqlite_only
def test_old_database_is_backed_up_then_upgraded(tmp_path):
    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade_to(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql("insert into study (oid, title, protocol_number, is_demo, "
                             "created_at) values ('OLD', 'Old study', 'P1', 0, "
                             "'2026-01-01 00:00:00')")
    engine.dispose()
    db = open_database(f"sqlite:///{path}")
    assert current_revision(db.engine) == head_revision()
    assert "form_instance" in inspect(db.engine).get_table_names()
    db.dispose()
    backups = list(tmp_path.glob("old.db.*.rev-0001.bak"))
    assert len(backups) == 1
    con = sqlite3.connect(backups[0])
    assert con.execute("select title from study").fetchall() == [("Old study",)]
    assert con.execute("select version_num from alembic_version").fetchall() == [("0001",)]
    con.close()


def test_schema_newer_than_app_is_refused_and_untouched(study):
    url, path = study.db.url, study.db.path
    study.close()
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("update alembic_version set version_num = '9999_future'"))
    engine.dispose()
    before = path.read_bytes() if path is not None else _row_counts(url)
    with pytest.raises(DatabaseRefused, match="newer crf-app") as refused:
        open_database(url)
    if path is not None:
        assert path.read_bytes() == before
        assert not list(path.parent.glob("*.bak"))
    else:
        assert _row_counts(url) == before
        if make_url(url).password:  # a server's password never shows in a message
            assert "***" in str(refused.value)
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as conn:
            assert conn.execute(text("select version_num from alembic_version")).scalar() \
                == "9999_future"
        engine.dispose()


@pytest.mark.sqlite_only
def test_not_a_database_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    before = path.read_bytes()
    with pytest.raises(DatabaseRefused, match="not a SQLite database"):
        open_database(f"sqlite:///{path}")
    assert path.read_bytes() == before


@pytest.mark.sqlite_only
def test_corrupt_database_is_refused(study):
    path = study.db.path
    study.close()
    data = bytearray(path.read_bytes())
    data[100:4096 * 3] = b"\xff" * (4096 * 3 - 100)  # wreck the schema pages, keep the header
    path.write_bytes(bytes(data))
    with pytest.raises(DatabaseRefused, match=r"damaged|integrity"):
        open_database(f"sqlite:///{path}")


@pytest.mark.sqlite_only
@pytest.mark.parametrize("fixture", sorted((__import__("pathlib").Path(__file__).parent / "data")
                                           .glob("rev-*.db")), ids=lambda p: p.name)
def test_database_from_every_released_revision_upgrades_with_its_data(tmp_path, fixture):
    path = tmp_path / fixture.name
    path.write_bytes(fixture.read_bytes())
    before_counts, before = _row_counts(path)
    db = open_database(f"sqlite:///{path}")
    assert current_revision(db.engine) == head_revision()
    db.dispose()
    _after_counts, after = _row_counts(path)
    for table, rows in before.items():
        assert after[table] == rows, table
    assert before_counts["subject"] == 1
