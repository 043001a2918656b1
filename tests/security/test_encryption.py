"""Encryption at rest: a lost laptop's database file gives nothing away without its passphrase."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import date

import pytest

pytest.importorskip("sqlcipher3", reason="the SQLCipher binding is not installed on this "
                    "platform (pip install 'crf-app[encryption]')")

from crf_app.domain.errors import DatabaseRefused, PassphraseRequired
from crf_app.services import encryption as enc
from crf_app.services.context import open_new_database, open_study
from crf_app.services.demo import DEMO_PASSWORD, create_demo_study
from crf_app.services.maintenance import backup
from crf_app.storage import encryption as storage_enc

PASSPHRASE = "amber-otter-lantern-42"


@pytest.fixture(autouse=True)
def _forget_keys():
    yield
    storage_enc._KEYS.clear()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def encrypted_db(tmp_path, protocol, form_definitions):
    path = tmp_path / "laptop.db"
    enc.use_passphrase_for_new(str(path), PASSPHRASE)
    db = open_new_database(str(path))
    create_demo_study(db, protocol, form_definitions, subjects=3, today=date(2026, 11, 2))
    db.dispose()
    storage_enc._KEYS.clear()
    return path


def test_the_file_holds_no_plain_text(encrypted_db):
    raw = encrypted_db.read_bytes() + b"".join(
        p.read_bytes() for p in encrypted_db.parent.glob("laptop.db-*"))
    assert not raw.startswith(b"SQLite format 3")
    for plain in (b"S01-001", b"NASEMAX", b"coordinator", b"vital_signs"):
        assert plain not in raw


def test_opening_without_the_passphrase_asks_for_it_and_changes_nothing(encrypted_db):
    before = _sha(encrypted_db)
    assert enc.needs_passphrase(str(encrypted_db))
    with pytest.raises(PassphraseRequired, match="encrypted"):
        open_study(str(encrypted_db))
    assert _sha(encrypted_db) == before


def test_a_wrong_passphrase_is_refused_and_not_remembered(encrypted_db):
    before = _sha(encrypted_db)
    with pytest.raises(DatabaseRefused, match="passphrase is wrong"):
        enc.unlock(str(encrypted_db), "not-the-right-one")
    assert enc.needs_passphrase(str(encrypted_db))
    assert _sha(encrypted_db) == before


def test_the_right_passphrase_opens_the_study_with_its_data(encrypted_db):
    from crf_app.services.accounts import login
    from crf_app.services.subjects import list_subjects

    enc.unlock(str(encrypted_db), PASSPHRASE)
    study = open_study(str(encrypted_db))
    try:
        ctx = login(study, "monitor", DEMO_PASSWORD)
        assert len(list_subjects(ctx)) == 3
    finally:
        study.close()


def test_backups_are_encrypted_with_the_same_passphrase(encrypted_db, tmp_path):
    enc.unlock(str(encrypted_db), PASSPHRASE)
    study = open_study(str(encrypted_db))
    try:
        copy = backup(study.db, tmp_path / "copy.db")
    finally:
        study.close()
    assert storage_enc.looks_encrypted(copy)
    assert b"S01-001" not in copy.read_bytes()
    assert storage_enc.quick_check(copy, PASSPHRASE) == "ok"
    with pytest.raises(DatabaseRefused):
        storage_enc.quick_check(copy, "wrong-passphrase")


def test_a_plain_database_gets_an_encrypted_copy(tmp_path, protocol, form_definitions):
    plain = tmp_path / "plain.db"
    db = open_new_database(str(plain))
    create_demo_study(db, protocol, form_definitions, subjects=2, today=date(2026, 11, 2))
    db.dispose()
    target = enc.encrypt_copy(str(plain), tmp_path / "secret.db", PASSPHRASE)
    assert storage_enc.looks_encrypted(target) and not storage_enc.looks_encrypted(plain)
    with pytest.raises(DatabaseRefused, match="already exists"):
        enc.encrypt_copy(str(plain), target, PASSPHRASE)
    with pytest.raises(DatabaseRefused, match="at least 10"):
        enc.encrypt_copy(str(plain), tmp_path / "weak.db", "short")
    enc.unlock(str(target), PASSPHRASE)
    study = open_study(str(target))
    study.close()


def _cli(*args, stdin="", env_passphrase=None, tmp_path=None):
    import os

    env = dict(os.environ)
    env.pop(storage_enc.ENV_PASSPHRASE, None)
    if env_passphrase:
        env[storage_enc.ENV_PASSPHRASE] = env_passphrase
    return subprocess.run([sys.executable, "-m", "crf_app", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=120)


def test_command_line_asks_for_the_passphrase_or_takes_it_from_the_environment(encrypted_db):
    db = str(encrypted_db)
    asked = _cli("--database", db, "users", "list", stdin=f"{PASSPHRASE}\n")
    assert asked.returncode == 0, asked.stderr
    assert "coordinator" in asked.stdout
    wrong = _cli("--database", db, "users", "list", stdin="nope-nope-nope\n")
    assert wrong.returncode == 1 and "passphrase is wrong" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    env = _cli("--database", db, "verify-audit", env_passphrase=PASSPHRASE)
    assert env.returncode == 0, env.stderr


def test_command_line_encrypts_a_copy(tmp_path):
    plain, secret = tmp_path / "p.db", tmp_path / "s.db"
    assert _cli("--database", str(plain), "demo", "--subjects", "1").returncode == 0
    out = _cli("--database", str(plain), "encrypt", "--out", str(secret),
               stdin=f"{PASSPHRASE}\n{PASSPHRASE}\n")
    assert out.returncode == 0, out.stderr
    assert storage_enc.looks_encrypted(secret)
    listed = _cli("--database", str(secret), "users", "list", env_passphrase=PASSPHRASE)
    assert listed.returncode == 0 and "monitor" in listed.stdout


def test_encrypting_a_folder_or_a_non_database_is_refused_plainly(tmp_path):
    with pytest.raises(DatabaseRefused, match="no SQLite database file"):
        enc.encrypt_copy(str(tmp_path), tmp_path / "x.db", PASSPHRASE)
    junk = tmp_path / "junk.db"
    junk.write_text("hello\n" * 10)
    with pytest.raises(DatabaseRefused):
        enc.encrypt_copy(str(junk), tmp_path / "y.db", PASSPHRASE)
