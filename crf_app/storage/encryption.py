"""Encryption at rest: SQLCipher databases (AES-256, key derived from a passphrase).

A laptop lost on a train must not hand over its study. With a passphrase, the database file is a
SQLCipher file: every page is encrypted, the header included, and backups are written encrypted
with the same passphrase. SQLAlchemy's SQLite dialect reaches it through the
maintained `sqlcipher3` binding (PyPI `sqlcipher3-binary`, the `encryption` extra).

The passphrase is held in this process only (register_passphrase, or $CRF_DB_PASSPHRASE for
scripts); it never enters a URL, a log or an error message.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from crf_app.domain.errors import DatabaseRefused

ENV_PASSPHRASE = "CRF_DB_PASSPHRASE"
SQLITE_MAGIC = b"SQLite format 3\x00"
MIN_PASSPHRASE = 10


def sqlcipher() -> ModuleType:
    """The SQLCipher DB-API module, or a plain message saying how to install it."""
    try:
        import sqlcipher3
    except ImportError:  # pragma: no cover - the test extras install it
        raise DatabaseRefused("encrypted databases need SQLCipher: pip install "
                              "'crf-app[encryption]' (the sqlcipher3-binary package)") from None
    return sqlcipher3


def looks_encrypted(path: Path) -> bool:
    """True for a file that may be a SQLCipher database: whole pages (a multiple of 1 KiB)
    whose first bytes are not SQLite's plain-text header."""
    try:
        with path.open("rb") as fh:
            header = fh.read(16)
        size = path.stat().st_size
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    return size >= 1024 and size % 1024 == 0 and header != SQLITE_MAGIC


_KEYS: dict[Path, str] = {}


def register_passphrase(path: Path, passphrase: str) -> None:
    """Remember the passphrase of the database file `path` for this process (never on disk).

    Every engine crf-app makes for that file (storage.engine.make_engine) then opens it with
    SQLCipher and this key; backups of it are written encrypted with the same key.
    """
    _KEYS[Path(path).resolve()] = passphrase


def forget_passphrase(path: Path) -> None:
    _KEYS.pop(Path(path).resolve(), None)


def passphrase_for(path: Path | None) -> str | None:
    """The registered passphrase of `path`, else $CRF_DB_PASSPHRASE for an encrypted file."""
    if path is None:
        return None
    key = _KEYS.get(Path(path).resolve())
    if key is None and looks_encrypted(Path(path)):
        key = os.environ.get(ENV_PASSPHRASE) or None
    return key


def sqlcipher_engine_args() -> dict:
    """create_engine() arguments that make SQLAlchemy's SQLite dialect use SQLCipher."""
    return {"module": sqlcipher()}


def apply_key(dbapi_conn, passphrase: str) -> None:
    """The first statements on a new SQLCipher connection: quiet logging, then the key."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA cipher_log_level = NONE")
    cur.execute(f"PRAGMA key = {_quote(passphrase)}")
    cur.close()


def passphrase_problems(passphrase: str) -> list[str]:
    if len(passphrase) < MIN_PASSPHRASE:
        return [f"passphrase: at least {MIN_PASSPHRASE} characters"]
    return []


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def open_keyed(path: Path, passphrase: str, *, read_only: bool = False):
    """A raw SQLCipher connection to `path`, keyed and checked (wrong key → DatabaseRefused)."""
    mod = sqlcipher()
    con = mod.connect(f"file:{path}?mode=ro" if read_only else str(path), uri=read_only,
                      isolation_level=None)
    apply_key(con, passphrase)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except mod.DatabaseError:
        con.close()
        raise DatabaseRefused(f"{path} is not a SQLite database this passphrase opens: the "
                              "passphrase is wrong, or the file is damaged or not a crf-app "
                              "database; nothing was changed") from None
    return con


def quick_check(path: Path, passphrase: str) -> str:
    con = open_keyed(path, passphrase, read_only=True)
    try:
        return con.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        con.close()


def export_copy(source: Path, target: Path, *, source_key: str | None,
                target_key: str | None) -> Path:
    """A consistent copy of `source` at `target`, re-keyed (or decrypted with target_key None).

    Uses SQLCipher's sqlcipher_export inside one read transaction, written to a temporary name
    and renamed, so a crash never leaves a half-written copy under the target's name.
    """
    mod = sqlcipher()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    tmp.unlink(missing_ok=True)
    con = (open_keyed(source, source_key) if source_key
           else mod.connect(str(source), isolation_level=None))
    try:
        con.execute(f"ATTACH DATABASE {_quote(str(tmp))} AS copy KEY {_quote(target_key or '')}")
        con.execute("BEGIN")
        con.execute("SELECT sqlcipher_export('copy')")
        version = con.execute("PRAGMA main.user_version").fetchone()[0]
        con.execute(f"PRAGMA copy.user_version = {int(version)}")
        con.execute("COMMIT")
        con.execute("DETACH DATABASE copy")
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(target)
    return target


def encrypt_file(source: Path, target: Path, passphrase: str) -> Path:
    """An encrypted copy of the plain crf-app database `source` (the original is untouched)."""
    if looks_encrypted(source):
        raise DatabaseRefused(f"{source} is already encrypted")
    if target.exists():
        raise DatabaseRefused(f"{target} already exists; choose a new file for the encrypted "
                              "copy")
    problems = passphrase_problems(passphrase)
    if problems:
        raise DatabaseRefused(problems[0])
    try:
        return export_copy(source, target, source_key=None, target_key=passphrase)
    except sqlcipher().Error as exc:
        raise DatabaseRefused(f"cannot write an encrypted copy of {source} to {target}: {exc}; "
                              "nothing was changed") from None
