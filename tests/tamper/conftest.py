"""The busy study (built once per session) and the laptops that exchanged files with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tamper.scenario import busy_laptop, copy_db, exchange


@pytest.fixture(scope="session")
def busy(tmp_path_factory, protocol, form_definitions) -> Path:
    """Laptop A after every audited action the app has (database path)."""
    path = tmp_path_factory.mktemp("busy") / "a.db"
    busy_laptop(path, protocol, form_definitions)
    return path


@pytest.fixture(scope="session")
def exchanged(busy, tmp_path_factory, protocol, form_definitions) -> dict[str, Path]:
    """{'a': laptop A after exchanging ODM files with B, 'b': laptop B after merging A's files
    and resolving a conflict, 'new': a study created from A's first ODM file}."""
    folder = tmp_path_factory.mktemp("exchanged")
    paths = {"a": copy_db(busy, folder / "a.db"), "b": folder / "b.db",
             "new": folder / "new.db"}
    exchange(paths["a"], paths["b"], paths["new"], folder, protocol, form_definitions)
    return paths


@pytest.fixture
def victim(busy, tmp_path) -> Path:
    """A fresh copy of the busy laptop's database to tamper with."""
    return copy_db(busy, tmp_path / "victim.db")
