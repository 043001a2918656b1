"""GUI tests never block on a modal question: unsaved-changes prompts answer Discard."""

import pytest
from PySide6.QtWidgets import QMessageBox


@pytest.fixture(autouse=True)
def _no_modal_prompts(monkeypatch):
    from crf_app.gui.form_dialog import FormDialog

    monkeypatch.setattr(FormDialog, "confirm_discard",
                        lambda self: QMessageBox.StandardButton.Discard)
    for name in ("question", "warning", "critical", "information"):
        monkeypatch.setattr(QMessageBox, name,
                            staticmethod(lambda *a, **k: QMessageBox.StandardButton.Ok))
