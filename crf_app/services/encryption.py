"""Encryption at rest for the site laptop's database file (SQLCipher), as the CLI and GUI use it."""

from __future__ import annotations

import os
from pathlib import Path

from crf_app.domain.errors import DatabaseRefused
from crf_app.storage import encryption


def _path(url: str | None) -> Path | None:
    """The SQLite file behind `url` — resolved without importing SQLAlchemy, so asking whether
    a passphrase is needed costs nothing at start-up."""
    url = url or os.environ.get("CRF_DATABASE_URL")
    if not url:
        from platformdirs import user_data_dir

        return Path(user_data_dir("crf-app", appauthor=False)) / "crf-app.db"
    if "://" not in url:
        return Path(url).resolve()
    from crf_app.storage.engine import resolve_database_url, sqlite_path

    return sqlite_path(resolve_database_url(url))


def needs_passphrase(url: str | None) -> bool:
    """True when the database file is encrypted and no passphrase is known for it yet."""
    path = _path(url)
    return (path is not None and encryption.looks_encrypted(path)
            and encryption.passphrase_for(path) is None)


def unlock(url: str | None, passphrase: str) -> None:
    """Check `passphrase` against the encrypted file and keep it for this process.

    A wrong passphrase is refused (DatabaseRefused) and nothing is remembered.
    """
    path = _path(url)
    if path is None or not encryption.looks_encrypted(path):
        raise DatabaseRefused("this database is not encrypted; no passphrase is needed")
    encryption.quick_check(path, passphrase)
    encryption.register_passphrase(path, passphrase)


def use_passphrase_for_new(url: str | None, passphrase: str) -> None:
    """Create the (not yet existing) database `url` encrypted with `passphrase`."""
    path = _path(url)
    if path is None:
        raise DatabaseRefused("encryption at rest applies to SQLite files; a PostgreSQL server "
                              "encrypts its own storage")
    if path.exists() and path.stat().st_size:
        raise DatabaseRefused(f"{path} already exists; use `crf-app encrypt --out NEW_FILE` to "
                              "make an encrypted copy of it")
    problems = encryption.passphrase_problems(passphrase)
    if problems:
        raise DatabaseRefused(problems[0])
    encryption.register_passphrase(path, passphrase)


def encrypt_copy(url: str | None, target: Path, passphrase: str) -> Path:
    """An encrypted copy of the plain database `url` at `target` (the original is untouched)."""
    path = _path(url)
    if path is None or not path.is_file():
        raise DatabaseRefused(f"{path or url}: there is no SQLite database file to encrypt")
    return encryption.encrypt_file(path, Path(target), passphrase)
