"""The monitoring cycle through the real windows: query raised, answered, corrected, closed."""

from datetime import date

from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.gui.audit_viewer import AuditViewerDialog
from crf_app.gui.form_dialog import FormDialog
from crf_app.gui.query_list import QueryListDialog
from crf_app.services import forms as fsvc
from crf_app.services import subjects as svc
from tests.conftest import fixed_clock

VITALS = {"SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6", "WEIGHT": "80.0",
          "HEIGHT": "180"}


def test_query_cycle_in_the_gui(qtbot, as_role):
    coord, mon = as_role(Role.COORDINATOR), as_role(Role.MONITOR)
    coord.clock = mon.clock = fixed_clock()
    sid = svc.enroll_subject(coord, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                               date(2026, 11, 1), date(2026, 11, 1)))
    vid = svc.subject_detail(coord, sid).visits[0].id
    fsvc.save_form(coord, vid, "vital_signs", VITALS, complete=True)

    # the monitor raises a query from the form; the form is read-only for them
    form = FormDialog(mon, vid, "vital_signs")
    qtbot.addWidget(form)
    assert not form.save_button.isEnabled() and form.query_button.isVisibleTo(form)
    form.ask_query = lambda: ("PULSE", "Source document says 78")
    form.raise_query()
    assert "Source document says 78" in form.renderer.messages["PULSE"].text()

    # the coordinator answers in the query list and corrects the value with a reason
    ql = QueryListDialog(coord)
    qtbot.addWidget(ql)
    assert ql.model.rowCount() == 1 and not ql.close_button.isEnabled()
    ql.table.selectRow(0)
    assert ql.answer_button.isEnabled()
    ql.ask_text = lambda title: "Corrected to 78 from source"
    ql.answer_button.click()
    assert ql.model.rows[0].state == "answered"
    entry = FormDialog(coord, vid, "vital_signs")
    qtbot.addWidget(entry)
    entry.renderer.editors["PULSE"].set_value("78")
    entry.ask_reason = lambda: "Transcription error, corrected from source"
    assert entry.save()

    # the monitor closes it; the thread shows every step
    ql2 = QueryListDialog(mon)
    qtbot.addWidget(ql2)
    ql2.table.selectRow(0)
    ql2.ask_text = lambda title: "Confirmed against source"
    ql2.close_button.click()
    ql2.state.setCurrentIndex(ql2.state.findData("closed"))
    assert [r.state for r in ql2.model.rows] == ["closed"]
    ql2.table.selectRow(0)
    thread = ql2.thread.toPlainText()
    assert "Source document says 78" in thread and "Confirmed against source" in thread

    # the audit viewer shows the correction with its reason
    av = AuditViewerDialog(mon, subject_id=sid)
    qtbot.addWidget(av)
    av.field.setText("PULSE")
    rows = [(r.old, r.new, r.reason) for r in av.model.rows]
    assert ("72", "78", "Transcription error, corrected from source") in rows


def test_idle_lock_asks_for_the_same_users_password(qtbot, as_role, study):
    from crf_app.gui.idle_lock import IdleLock
    from crf_app.gui.main_window import MainWindow
    from tests.conftest import PASSWORD

    coord = as_role(Role.COORDINATOR)
    win = MainWindow(coord)
    qtbot.addWidget(win)
    lock = IdleLock(win, coord, minutes=0.001)  # 60 ms
    qtbot.waitUntil(lambda: lock.locked, timeout=3000)
    assert not win.isEnabled()
    lock.dialog.password.setText("wrong-password-9")
    lock.dialog.try_unlock()
    assert lock.locked and "Wrong" in lock.dialog.error.text()
    lock.dialog.password.setText(PASSWORD)
    lock.dialog.try_unlock()
    assert not lock.locked and win.isEnabled()


def test_whole_monitoring_cycle_sdv_signature_and_invalidation(qtbot, as_role):
    from crf_app.gui.signature_dialog import SignatureDialog
    from crf_app.services import queries as qsvc
    from crf_app.services.audit_trail import audit_history
    from crf_app.services.signoff import signature_manifest
    from tests.conftest import PASSWORD

    coord, mon, inv = as_role(Role.COORDINATOR), as_role(Role.MONITOR), as_role(Role.INVESTIGATOR)
    for c in (coord, mon, inv):
        c.clock = fixed_clock()
    sid = svc.enroll_subject(coord, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                               date(2026, 11, 1), date(2026, 11, 1)))
    vid = svc.subject_detail(coord, sid).visits[0].id
    entry = FormDialog(coord, vid, "vital_signs")
    qtbot.addWidget(entry)
    entry.renderer.set_raw(VITALS)
    entry.complete_box.setChecked(True)
    assert entry.save()
    qid = qsvc.raise_query(mon, vid, "vital_signs", "PULSE", "Source says 78")
    qsvc.answer_query(coord, qid, "Corrected")
    fix = FormDialog(coord, vid, "vital_signs")
    qtbot.addWidget(fix)
    fix.renderer.editors["PULSE"].set_value("78")
    fix.ask_reason = lambda: "Transcription error"
    assert fix.save()
    qsvc.close_query(mon, qid, "OK")

    review = FormDialog(mon, vid, "vital_signs")
    qtbot.addWidget(review)
    assert review.verify_button.isVisibleTo(review) and not review.sign_button.isVisibleTo(review)
    review.verify()
    assert "verified" in review.status_label.text()

    sig = SignatureDialog(inv, sid, scope="form", what="Vital signs", visit_id=vid,
                          form_id="vital_signs")
    qtbot.addWidget(sig)
    sig.password.setText("wrong-password-1")
    sig.sign()
    assert sig.signature_id is None and "wrong password" in sig.error.text()
    sig.password.setText(PASSWORD)
    sig.sign()
    assert sig.signature_id is not None
    assert fsvc.form_matrix(inv, sid).cells[(vid, "vital_signs")].status == "signed"

    later = FormDialog(coord, vid, "vital_signs")
    qtbot.addWidget(later)
    later.renderer.editors["TEMP"].set_value("37.2")
    later.ask_reason = lambda: "Re-measured"
    assert later.save()
    assert "invalidated" in later.status_label.text()
    assert "verification removed" in later.status_label.text()
    assert signature_manifest(inv, sid)[0].state == "invalidated"
    assert fsvc.form_matrix(inv, sid).cells[(vid, "vital_signs")].status == "complete"
    trail = {(r.entity, r.action, r.new) for r in audit_history(mon, subject_id=sid)}
    for step in [("query", "create", "open"), ("query", "update", "answered"),
                 ("query", "update", "closed"), ("verification", "create", "verified"),
                 ("signature", "create", "Reviewed and approved"),
                 ("signature", "update", "invalidated"), ("verification", "update", "cleared")]:
        assert step in trail, step


def test_data_manager_locks_and_unlocks_a_subject_in_the_window(qtbot, as_role, monkeypatch):
    from PySide6.QtWidgets import QInputDialog

    from crf_app.gui.main_window import MainWindow
    from crf_app.services.signoff import active_locks

    coord, dm = as_role(Role.COORDINATOR), as_role(Role.DATA_MANAGER)
    sid = svc.enroll_subject(coord, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                               date(2026, 11, 1), date(2026, 11, 1)))
    win = MainWindow(dm)
    qtbot.addWidget(win)
    win.select_subject(sid)
    view = win.subject_view
    assert view.lock_button.isVisibleTo(win) and not view.sign_button.isVisibleTo(win)
    monkeypatch.setattr(QInputDialog, "getText",
                        staticmethod(lambda *a, **k: ("database lock for interim", True)))
    view.lock_subject()
    assert "locked (subject)" in view.facts["Status"].text()
    assert len(active_locks(dm, sid)) == 1
    monkeypatch.setattr(QInputDialog, "getItem",
                        staticmethod(lambda parent, title, label, items, *a: (items[0], True)))
    view.unlock()
    assert active_locks(dm, sid) == [] and "locked" not in view.facts["Status"].text()
