"""Dosing dialogs: one administration (or missed dose), and the quick "usual day" entry.

Both check as the user types with the domain's `validate_dose` against the subject's regimen
and other records (fetched from the service), so what they show is what the service decides:
errors in red (Save disabled), findings in amber (saved, and a query is raised), warnings in
amber (saved).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.adverse_events import parse_date, parse_time
from crf_app.domain.dosing import (
    GIVEN_BY,
    INTRANASAL,
    NOSTRILS,
    ROUTES,
    DoseInput,
    dec,
    usual_day,
    validate_dose,
)
from crf_app.domain.errors import CrfError, FieldError, ReasonRequired, ValidationFailed
from crf_app.gui.log_form import FieldForm, NoteLabel, code_combo, combo_code, set_combo
from crf_app.gui.widgets import ErrorLabel
from crf_app.services import dosing as svc
from crf_app.services.context import UserContext

DOSE_FIELDS = ("dose_mg", "instillations", "nostril", "lot", "given_by")


def _finding_notes(findings: list[FieldError], warnings: list[FieldError]) -> list[FieldError]:
    return ([FieldError(f.field, f.rule, f"Query will be raised: {f.message}") for f in findings]
            + [FieldError(w.field, w.rule, f"Warning: {w.message}") for w in warnings])


def _buttons(dialog: QDialog, ok_text: str) -> tuple[QDialogButtonBox, QWidget]:
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                               | QDialogButtonBox.StandardButton.Cancel)
    ok = buttons.button(QDialogButtonBox.StandardButton.Ok)
    ok.setText(ok_text)
    buttons.accepted.connect(dialog.submit)  # type: ignore[attr-defined]
    buttons.rejected.connect(dialog.reject)
    return buttons, ok


class DoseDialog(QDialog):
    """A new administration or missed dose (row None), or the correction of a saved one."""

    def __init__(self, ctx: UserContext, subject_id: int, row: svc.DoseRow | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id = subject_id
        self.row = row
        self.outcome: svc.DoseOutcome | None = None
        info = self.info = svc.dose_form_context(ctx, subject_id,
                                                 exclude_id=row.id if row else None)
        reg = info.regimen
        title = "Correct dosing record" if row else "Record administration"
        self.setWindowTitle(f"{title} — {info.screening_number}")
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        head = QLabel(f"<b>{title}</b> · Subject {info.screening_number}<br>"
                      f"<span style='color:#4a5568'>Regimen: {reg.indication} — "
                      f"{dec(reg.dose_mg_per_instillation.min)}–"
                      f"{dec(reg.dose_mg_per_instillation.max)} mg per instillation, "
                      f"{reg.instillations_per_day.min}–{reg.instillations_per_day.max} a day, "
                      f"at most {dec(reg.daily_max_mg)} mg a day</span>")
        head.setWordWrap(True)
        head.setMinimumWidth(540)  # the layout sets the dialog's minimum from its contents
        layout.addWidget(head)
        f = self.form = FieldForm()
        self.date = f.add("date", "&Date", QLineEdit(ctx.today().isoformat()))
        self.date.setPlaceholderText("YYYY-MM-DD")
        self.time = f.add("time", "&Time", QLineEdit())
        self.time.setPlaceholderText("HH:MM (planned time for a missed dose, optional)")
        self.missed = f.add("missed", "", QCheckBox("Dose &missed (not taken)"))
        self.dose_mg = f.add("dose_mg", "Dose per &instillation (mg)", QLineEdit())
        self.dose_mg.setPlaceholderText(f"e.g. {dec(reg.dose_mg_per_instillation.min)}")
        self.instillations = f.add("instillations", "Instillatio&ns", QLineEdit())
        self.instillations.setPlaceholderText("e.g. 1")
        self.nostril = f.add("nostril", "N&ostril", code_combo(NOSTRILS))
        self.route = f.add("route", "&Route", code_combo(ROUTES))
        set_combo(self.route, INTRANASAL)
        self.lot = f.add("lot", "&Lot number", QLineEdit())
        self.given_by = f.add("given_by", "&Given by", code_combo(GIVEN_BY))
        self.missed_reason = f.add("missed_reason", "Reason &missed", QLineEdit())
        layout.addWidget(f)
        self.reason = QLineEdit()
        self.reason.setObjectName("reason")
        self.reason.setPlaceholderText("required when you change saved values")
        self.reason_error = ErrorLabel()
        if row is not None:
            rf = QFormLayout()
            rf.addRow("Reason for &change", self.reason)
            rf.addRow("", self.reason_error)
            layout.addLayout(rf)
        self.note = NoteLabel()
        self.form_error = ErrorLabel()
        layout.addWidget(self.note)
        layout.addWidget(self.form_error)
        self.buttons, self.ok_button = _buttons(self, "Save")
        layout.addWidget(self.buttons)
        self.original = None
        if row is not None:
            self.set_input(svc.dose_input(row))
            self.original = validate_dose(self.raw(), info.context).value
            f.touched.update(f.widgets)
        else:
            last = next((r for r in reversed(info.context.existing) if not r.missed), None)
            if last is not None:
                self.lot.setText(last.lot)
                set_combo(self.given_by, last.given_by)
            f.touched.update({"lot", "given_by", "date"})
        f.changed.connect(self.revalidate)
        self.reason.textChanged.connect(self.revalidate)
        self.revalidate()

    def raw(self) -> DoseInput:
        missed = self.missed.isChecked()
        return DoseInput(date=self.date.text(), time=self.time.text(),
                         dose_mg="" if missed else self.dose_mg.text(),
                         instillations="" if missed else self.instillations.text(),
                         nostril="" if missed else combo_code(self.nostril),
                         route=combo_code(self.route), lot="" if missed else self.lot.text(),
                         given_by="" if missed else combo_code(self.given_by), missed=missed,
                         missed_reason=self.missed_reason.text() if missed else "")

    def set_input(self, raw: DoseInput) -> None:
        self.date.setText(raw.date)
        self.time.setText(raw.time)
        self.missed.setChecked(raw.missed)
        self.dose_mg.setText(raw.dose_mg)
        self.instillations.setText(raw.instillations)
        set_combo(self.nostril, raw.nostril)
        set_combo(self.route, raw.route)
        self.lot.setText(raw.lot)
        set_combo(self.given_by, raw.given_by)
        self.missed_reason.setText(raw.missed_reason)

    def revalidate(self, *_args, show_all: bool = False) -> list[FieldError]:
        missed = self.missed.isChecked()
        for name in DOSE_FIELDS:
            self.form.set_row_visible(name, not missed)
        self.form.set_row_visible("missed_reason", missed)
        result = validate_dose(self.raw(), self.info.context)
        value = result.value
        reason_needed = (self.row is not None and value != self.original
                         and not self.reason.text().strip())
        self.reason_error.show_error(
            "A reason for change is required to change saved values" if reason_needed else "")
        other, notes = self.form.show_errors(result.errors, _finding_notes(result.findings,
                                                                            result.warnings),
                                             show_all)
        self.form_error.show_error("\n".join(other))
        self.note.show_note("\n".join(notes))
        self.ok_button.setEnabled(not result.errors and not reason_needed
                                  and self.info.can_edit)
        self.adjustSize()
        QTimer.singleShot(0, self.adjustSize)  # wrapped notes settle after one layout pass
        return result.errors

    def submit(self) -> None:
        if self.revalidate(show_all=True):
            return
        try:
            if self.row is None:
                self.outcome = svc.record_dose(self.ctx, self.subject_id, self.raw())
            else:
                self.outcome = svc.update_dose(self.ctx, self.row.id, self.raw(),
                                               self.reason.text(),
                                               expected_version=self.row.row_version)
        except ReasonRequired as exc:
            self.reason_error.show_error(exc.errors[0].message)
            return
        except ValidationFailed as exc:
            other, _ = self.form.show_errors(exc.errors, show_all=True)
            self.form_error.show_error("\n".join(other))
            return
        except CrfError as exc:
            self.form_error.show_error(f"Not saved: {exc}")
            return
        self.accept()


class UsualDayDialog(QDialog):
    """The quick daily entry: every usual administration of one day, saved together."""

    def __init__(self, ctx: UserContext, subject_id: int, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id = subject_id
        self.outcomes: list[svc.DoseOutcome] = []
        info = self.info = svc.dose_form_context(ctx, subject_id)
        self.setWindowTitle(f"Usual day — {info.screening_number}")
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        intro = QLabel(f"<b>Usual day</b> · Subject {info.screening_number}<br>Records the "
                       f"regimen's usual administrations of one day at once "
                       f"({info.regimen.instillations_per_day.min} × one instillation of "
                       f"{dec(info.regimen.dose_mg_per_instillation.min)} mg, alternating "
                       "nostrils). Change anything unusual afterwards, record by record.")
        intro.setWordWrap(True)
        intro.setMinimumWidth(500)
        layout.addWidget(intro)
        f = self.form = FieldForm()
        # The diary is usually entered day after day: offer the day after the last one.
        days = sorted(r.date for r in info.context.existing)
        day = ctx.today()
        if days and days[-1] < day:
            day = days[-1] + timedelta(days=1)
        self.date = f.add("date", "&Date", QLineEdit(day.isoformat()))
        self.date.setPlaceholderText("YYYY-MM-DD")
        self.time = f.add("time", "First dose at", QLineEdit("08:00"))
        self.time.setPlaceholderText("HH:MM")
        self.lot = f.add("lot", "&Lot number", QLineEdit())
        self.given_by = f.add("given_by", "&Given by", code_combo(GIVEN_BY, empty=None))
        last = next((r for r in reversed(info.context.existing) if not r.missed), None)
        if last is not None:
            self.lot.setText(last.lot)
            set_combo(self.given_by, last.given_by)
        layout.addWidget(f)
        self.preview = QLabel()
        self.preview.setObjectName("usualPreview")
        self.preview.setWordWrap(True)
        layout.addWidget(self.preview)
        self.note = NoteLabel()
        self.form_error = ErrorLabel()
        layout.addWidget(self.note)
        layout.addWidget(self.form_error)
        self.buttons, self.ok_button = _buttons(self, "Save the day")
        layout.addWidget(self.buttons)
        f.touched.update(f.widgets)
        f.changed.connect(self.revalidate)
        self.revalidate()

    def planned(self) -> tuple[list[DoseInput], list[FieldError]]:
        """The day's administrations and the errors that refuse them."""
        errors: list[FieldError] = []
        day = parse_date("date", self.date.text(), "Date", errors, required=True)
        at = parse_time("time", self.time.text(), "First dose time", errors, required=True)
        if day is None or at is None:
            return [], errors
        if any(r.date == day for r in self.info.context.existing):
            errors.append(FieldError("date", "day_has_records",
                                     f"{day.isoformat()} already has dosing records; add or "
                                     "correct administrations one by one"))
        try:
            plan = usual_day(self.info.regimen, day, at, lot=self.lot.text(),
                             given_by=combo_code(self.given_by))
        except ValueError:
            errors.append(FieldError("time", "late_start",
                                     "The usual day must start at 18:00 at the latest"))
            plan = []
        return plan, errors

    def revalidate(self, *_args, show_all: bool = False) -> list[FieldError]:
        plan, errors = self.planned()
        findings: list[FieldError] = []
        warnings: list[FieldError] = []
        existing = list(self.info.context.existing)
        for raw in plan:
            result = validate_dose(raw, replace(self.info.context, existing=existing))
            errors += [e for e in result.errors if e not in errors]
            findings += [f for f in result.findings if f not in findings]
            warnings += [w for w in result.warnings if w not in warnings]
            if result.value is not None:
                existing.append(result.value)
        lines = [f"{p.time}  {p.dose_mg} mg × {p.instillations} — "
                 f"{NOSTRILS[p.nostril].lower()}" for p in plan]
        self.preview.setText("<b>Will record:</b><br>" + "<br>".join(lines) if plan else "")
        other, notes = self.form.show_errors(errors, _finding_notes(findings, warnings),
                                             show_all)
        self.form_error.show_error("\n".join(other))
        self.note.show_note("\n".join(notes))
        self.ok_button.setEnabled(not errors and bool(plan) and self.info.can_edit)
        self.adjustSize()
        QTimer.singleShot(0, self.adjustSize)  # wrapped notes settle after one layout pass
        return errors

    def submit(self) -> None:
        if self.revalidate(show_all=True):
            return
        errors: list[FieldError] = []
        day = parse_date("date", self.date.text(), "Date", errors, required=True)
        at = parse_time("time", self.time.text(), "Time", errors, required=True)
        assert day is not None and at is not None
        try:
            self.outcomes = svc.record_usual_day(self.ctx, self.subject_id, day, at,
                                                 self.lot.text(), combo_code(self.given_by))
        except ValidationFailed as exc:
            other, _ = self.form.show_errors(exc.errors, show_all=True)
            self.form_error.show_error("\n".join(other))
            return
        except CrfError as exc:
            self.form_error.show_error(f"Not saved: {exc}")
            return
        self.accept()
