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


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


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
