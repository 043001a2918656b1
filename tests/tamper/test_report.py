"""What `crf-app verify-audit` prints and the GUI shows: the chain, then the replay; exit 1
naming every discrepancy (a capped list, and the count)."""

from __future__ import annotations

import pytest

from crf_app.cli import main
from tests.tamper.scenario import event_id, raw

PULSE = "S01-004/SCR/vital_signs/PULSE"


def run(path, *args: str) -> int:
    return main(["--database", str(path), "verify-audit", *args])


def test_cli_clean(victim, capsys):
    assert run(victim) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("audit trail verified: ") and out[0].endswith("chain intact")
    assert out[1].startswith("replay: ") and out[1].endswith("the data matches the audit trail")


def test_cli_names_a_chain_break_and_the_replay_discrepancy(victim, capsys):
    eid = event_id(victim, f"entity_id = '{PULSE}'")
    raw(victim, f"update audit_event set new_value = '140' where id = {eid}", unlock_audit=True)
    assert run(victim) == 1
    out = capsys.readouterr().out
    assert f"audit trail BROKEN at event {eid}: its content does not match its hash" in out
    assert "1 discrepancy between the data and the audit trail:" in out
    assert f"  - item {PULSE}: stored '77', but the audit trail says '140' (event #{eid})" in out


@pytest.mark.parametrize("show", [None, "5"])
def test_cli_caps_the_list_and_prints_the_count(victim, capsys, show):
    [[(n,)]] = raw(victim, "select count(*) from item_value where item_id in ('SYSBP', "
                           "'DIABP', 'PULSE', 'TEMP')")
    raw(victim, "update item_value set value = value || '0' where item_id in ('SYSBP', "
                "'DIABP', 'PULSE', 'TEMP')")
    assert run(victim, *(["--show", show] if show else [])) == 1
    out = capsys.readouterr().out.splitlines()
    listed = [line for line in out if line.startswith("  - item ")]
    cap = int(show or 50)
    assert n > cap and len(listed) == cap
    assert f"{n} discrepancies between the data and the audit trail:" in out[1]
    assert out[-1] == f"  … and {n - cap} more ({n} in all)"


def test_the_gui_shows_the_same_report(victim, qtbot, monkeypatch, protocol):
    from PySide6.QtWidgets import QMessageBox

    from crf_app.gui.main_window import MainWindow
    from crf_app.services.accounts import login
    from crf_app.services.context import open_study
    from tests.interchange.odm_helpers import PASSWORD

    raw(victim, "update adverse_event set severity = 'SEVERE' where sequence = 1 and "
                "subject_id = (select id from subject where screening_number = 'S02-005')")
    monkeypatch.setattr(QMessageBox, "exec", lambda self: 0)
    study = open_study(f"sqlite:///{victim}")
    try:
        win = MainWindow(login(study, "dm", PASSWORD))
        qtbot.addWidget(win)
        box = win.verify_audit()
        assert box.icon() == QMessageBox.Icon.Critical
        assert "1 values or rows differ" in box.text()
        assert "adverse event S02-005/AE1 severity: stored 'SEVERE', but the audit trail says " \
               "'MILD'" in box.informativeText()
        assert "S02-005/AE1 severity" in box.detailedText()
        win.close()
    finally:
        study.close()
