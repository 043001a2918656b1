"""Shared fixtures: Qt offscreen, a fresh temp database per test, cheap password hashing."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.pop("CRF_DATABASE_URL", None)

import pytest

from crf_app.services.passwords import use_fast_hashing_for_tests

use_fast_hashing_for_tests()


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """No developer's real data folder or settings leak into a test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("CRF_DATABASE_URL", raising=False)


# --- study fixtures ------------------------------------------------------------------------
from datetime import UTC, date, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from crf_app.domain.protocol import load_protocol  # noqa: E402
from crf_app.domain.roles import Role  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "Test-pass-1234"
ROLE_USERS = {
    Role.ADMIN: ("admin", None),
    Role.COORDINATOR: ("coord", "S01"),
    Role.INVESTIGATOR: ("inv", "S01"),
    Role.MONITOR: ("mon", None),
    Role.DATA_MANAGER: ("dm", None),
}


@pytest.fixture(scope="session")
def protocol():
    return load_protocol(ROOT / "forms" / "study.yaml")


# --- database backends ------------------------------------------------------------------------
# Every test that uses `db_url` (directly or through `study`) runs on SQLite. When
# CRF_TEST_POSTGRES_URL names a PostgreSQL database the test role may create databases from
# (e.g. postgresql+psycopg://crf:crf@127.0.0.1:5432/crf), the tests under PG_TEST_DIRS run a
# second time on PostgreSQL, each in a fresh database copied from a template migrated once per
# session, and dropped afterwards. Tests that are about SQLite files are marked `sqlite_only`.
# Without the variable nothing is parametrised: the test ids and counts stay as they were.
PG_ENV = "CRF_TEST_POSTGRES_URL"
PG_TEST_DIRS = ("storage", "services", "migrations")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sqlite_only: about SQLite files (file checks, backups, raw sqlite3); never "
                   "run on PostgreSQL even when CRF_TEST_POSTGRES_URL is set")


def _postgres_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def pytest_generate_tests(metafunc):
    if "db_url" not in metafunc.fixturenames or not _postgres_url():
        return
    if metafunc.definition.get_closest_marker("sqlite_only"):
        return
    try:
        where = Path(metafunc.definition.path).resolve().relative_to(ROOT / "tests").parts
    except ValueError:
        return
    if where and where[0] in PG_TEST_DIRS:
        metafunc.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def db_url(request, tmp_path):
    """The URL of a fresh database: a new SQLite file, or (parametrised, see above) a new
    PostgreSQL database already at the schema head."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return request.getfixturevalue("postgres_db_url")
    return f"sqlite:///{tmp_path / 'study.db'}"


class PostgresServer:
    """Creates and drops the test databases on the server named by CRF_TEST_POSTGRES_URL.

    Copying the template takes the server most of a second, so the next test's database is
    copied in the background while a test runs, and used databases are dropped there too."""

    def __init__(self, url: str):
        from concurrent.futures import ThreadPoolExecutor

        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.url = make_url(url)
        if self.url.get_backend_name() != "postgresql":
            raise pytest.UsageError(f"{PG_ENV} must be a postgresql+psycopg:// URL")
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        self.prefix = f"crf_test_{os.getpid()}"
        self.count = 0
        self.template: str | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crf-test-pg")
        self._next = None  # the future of the next migrated copy
        self._dropping: list = []

    def url_of(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def _execute(self, sql: str) -> None:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            conn.execute(text(sql))

    def _new_name(self) -> str:
        self.count += 1
        return f"{self.prefix}_{self.count}"

    def _copy_template(self, name: str) -> str:
        self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.migrated_template()}"')
        return name

    def create(self) -> str:
        """A new database: a copy of the migrated template (the next one is being copied)."""
        ready = self._next or self._worker.submit(self._copy_template, self._new_name())
        self._next = self._worker.submit(self._copy_template, self._new_name())
        return ready.result()

    def drop(self, name: str) -> None:
        self._dropping.append(self._worker.submit(self._drop, name))

    def _drop(self, name: str) -> None:
        """Drop a test database, ending this role's sessions on it first. (Not WITH (FORCE):
        that also ends autovacuum workers, which a role without superuser may not do; a plain
        DROP DATABASE stops those itself.)"""
        import time

        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

        with self.admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                              "WHERE datname = :name AND usename = current_user "
                              "AND pid <> pg_backend_pid()"), {"name": name})
        for attempt in range(50):
            try:
                self._execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except OperationalError:  # still in use (a session ending): wait, try again
                if attempt == 49:
                    raise
                time.sleep(0.1)

    def migrated_template(self) -> str:
        if self.template is None:
            from crf_app.storage.migrate import open_database

            name = f"{self.prefix}_template"
            self._drop(name)
            self._execute(f'CREATE DATABASE "{name}"')
            open_database(self.url_of(name)).dispose()  # every migration, once per session
            self.template = name
        return self.template

    def close(self) -> None:
        if self._next is not None:
            self.drop(self._next.result())
        if self.template is not None:
            self.drop(self.template)
        self._worker.shutdown(wait=True)
        self.admin.dispose()
        for done in self._dropping:
            done.result()  # a database left behind is an error, not a silent leak


@pytest.fixture(scope="session")
def postgres_server():
    url = _postgres_url()
    if url is None:
        pytest.fail(f"{PG_ENV} is not set")
    server = PostgresServer(url)
    yield server
    server.close()


@pytest.fixture
def postgres_db_url(postgres_server):
    """A fresh PostgreSQL database at the schema head (dropped after the test)."""
    name = postgres_server.create()
    yield postgres_server.url_of(name)
    postgres_server.drop(name)


@pytest.fixture(scope="session")
def form_definitions():
    from crf_app.domain.forms import load_form_library

    return load_form_library(ROOT / "forms").to_dict()


@pytest.fixture
def study(db_url, protocol, form_definitions):
    """A fresh study database with one account per role (passwords: PASSWORD)."""
    from crf_app.services.context import open_new_database
    from crf_app.services.setup import NewUser, add_user, create_study
    from crf_app.storage.audit import SYSTEM

    db = open_new_database(db_url)
    handle = create_study(db, protocol, form_definitions,
                          admin=NewUser("admin", "Ada Admin", Role.ADMIN, PASSWORD))
    for role, (name, site) in ROLE_USERS.items():
        if role is not Role.ADMIN:
            add_user(db, SYSTEM, NewUser(name, f"{role.label} Test", role, PASSWORD, site))
    yield handle
    handle.close()


@pytest.fixture
def as_role(study):
    """as_role(Role.X) -> a logged-in UserContext for that role."""
    from crf_app.services.accounts import login

    def _login(role: Role):
        return login(study, ROLE_USERS[role][0], PASSWORD)

    return _login


@pytest.fixture
def coordinator(as_role):
    return as_role(Role.COORDINATOR)


def fixed_clock(y=2026, m=11, d=24, hh=10):
    return lambda: datetime(y, m, d, hh, 0, tzinfo=UTC)


TODAY = date(2026, 11, 24)
