"""Shared fixtures: Qt offscreen, a fresh temp database per test, cheap password hashing."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.pop("CRF_DATABASE_URL", None)

import pytest  # noqa: E402

from crf_app.services.passwords import use_fast_hashing_for_tests  # noqa: E402

use_fast_hashing_for_tests()


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """No developer's real data folder or settings leak into a test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("CRF_DATABASE_URL", raising=False)
