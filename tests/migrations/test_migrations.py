"""Models and migrations agree; history is linear; upgrades keep data; bad files are refused."""

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

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


def test_models_and_migrations_agree(db_url):
    db = open_database(db_url)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    db.dispose()
    assert diff == []


def _row_counts(path):
    con = sqlite3.connect(path)
    tables = [r[0] for r in con.execute(
        "select name from sqlite_master where type='table' and name != 'alembic_version'")]
    counts = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}
    dump = {t: con.execute(f"select * from {t} order by 1").fetchall() for t in tables}
    con.close()
    return counts, dump


def test_downgrade_and_upgrade_each_step_keeps_every_row(study, tmp_path, coordinator):
    from datetime import date

    from crf_app.domain.subjects import Enrollment
    from crf_app.services.subjects import enroll_subject

    enroll_subject(coordinator, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                           date(2026, 11, 1), date(2026, 11, 1),
                                           date(2026, 11, 2)))
    path = study.db.path
    study.close()
    counts_head, dump_head = _row_counts(path)
    assert counts_head["subject"] == 1 and counts_head["audit_event"] > 10
    engine = make_engine(f"sqlite:///{path}")
    revisions = [r.revision for r in reversed(list(script_directory().walk_revisions()))]
    for rev in reversed(revisions[1:]):
        previous = script_directory().get_revision(rev).down_revision
        downgrade_to(engine, previous)
        assert current_revision(engine) == previous
        counts_down, dump_down = _row_counts(path)
        for table in counts_down:  # every table that survives the downgrade keeps its rows
            assert dump_down[table] == dump_head[table], table
        upgrade_to(engine, rev)
        downgrade_to(engine, previous)
        upgrade_to(engine, "head")
        _counts_up, dump_up = _row_counts(path)
        for table in counts_down:
            assert dump_up[table] == dump_head[table], table
    engine.dispose()


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
    path = study.db.path
    study.close()
    con = sqlite3.connect(path)
    con.execute("update alembic_version set version_num = '9999_future'")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(DatabaseRefused, match="newer crf-app"):
        open_database(f"sqlite:///{path}")
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.bak"))


def test_not_a_database_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    before = path.read_bytes()
    with pytest.raises(DatabaseRefused, match="not a SQLite database"):
        open_database(f"sqlite:///{path}")
    assert path.read_bytes() == before


def test_corrupt_database_is_refused(study):
    path = study.db.path
    study.close()
    data = bytearray(path.read_bytes())
    data[100:4096 * 3] = b"\xff" * (4096 * 3 - 100)  # wreck the schema pages, keep the header
    path.write_bytes(bytes(data))
    with pytest.raises(DatabaseRefused, match=r"damaged|integrity"):
        open_database(f"sqlite:///{path}")


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
