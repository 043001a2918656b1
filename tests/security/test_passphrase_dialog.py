"""The passphrase window asked before login for an encrypted database."""

from __future__ import annotations

from datetime import date

import pytest

pytest.importorskip("sqlcipher3", reason="the SQLCipher binding is not installed on this "
                    "platform (pip install 'crf-app[encryption]')")
from PySide6.QtCore import Qt

from crf_app.gui.passphrase_dialog import PassphraseDialog, ask_passphrase_if_needed
from crf_app.services import encryption as enc
from crf_app.services.context import open_new_database
from crf_app.services.demo import create_demo_study
from crf_app.storage import encryption as storage_enc

PASSPHRASE = "amber-otter-lantern-42"


@pytest.fixture
def encrypted(tmp_path, protocol, form_definitions):
    path = tmp_path / "laptop.db"
    enc.use_passphrase_for_new(str(path), PASSPHRASE)
    db = open_new_database(str(path))
    create_demo_study(db, protocol, form_definitions, subjects=1, today=date(2026, 11, 2))
    db.dispose()
    storage_enc._KEYS.clear()
    yield str(path)
    storage_enc._KEYS.clear()


def test_a_wrong_passphrase_is_explained_and_asked_again(qtbot, encrypted):
    dialog = PassphraseDialog(encrypted)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.keyClicks(dialog.passphrase, "wrong-passphrase")
    qtbot.keyClick(dialog.passphrase, Qt.Key.Key_Return)
    assert dialog.isVisible() and not dialog.error.isHidden()
    assert "does not open this database" in dialog.error.text()
    assert enc.needs_passphrase(encrypted)
    dialog.passphrase.clear()
    qtbot.keyClicks(dialog.passphrase, PASSPHRASE)
    qtbot.keyClick(dialog.passphrase, Qt.Key.Key_Return)
    assert dialog.result() == PassphraseDialog.DialogCode.Accepted
    assert not enc.needs_passphrase(encrypted)


def test_a_plain_database_asks_nothing(tmp_path):
    assert ask_passphrase_if_needed(str(tmp_path / "plain.db")) is True
