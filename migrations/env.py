"""Alembic environment. The app runs migrations itself (crf_app.storage.migrate) and hands
over its connection; `alembic` on the command line works too with `-x url=...`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from crf_app.storage.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
        # One transaction for the whole upgrade, on SQLite too (Alembic's SQLite default is a
        # commit per revision): a crash mid-upgrade leaves the old schema, never a mix.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from crf_app.storage.engine import make_engine, resolve_database_url

    url = context.get_x_argument(as_dictionary=True).get("url") or resolve_database_url()
    engine = make_engine(url, foreign_keys=False)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("crf-app migrations run online only (they need the database's dialect)")
run_migrations_online()
