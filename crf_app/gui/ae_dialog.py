"""Record or correct an adverse event; record when an SAE report was sent.

Every rule is checked as the user types with the same function the service uses
(`services.adverse_events.check_ae`): the broken rule shows in red under its field and Save
stays disabled until the event is valid. Flags (late onset, withdrawn subject) show in amber:
the event is saved and flagged for review.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime

from PySide6.QtCore import QDateTime, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QDateTimeEdit,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.adverse_events import (
    AE_ACTIONS,
    AE_GRADES,
    AE_LOCATIONS,
    AE_OUTCOMES,
    AE_RELATIONSHIPS,
    AE_SEVERITIES,
    AE_TERMS,
    SERIOUSNESS_CRITERIA,
    YES_NO,
    AeInput,
)
from crf_app.domain.errors import CrfError, FieldError, ReasonRequired, ValidationFailed
from crf_app.gui.log_form import FieldForm, NoteLabel, code_combo, combo_code, set_combo
from crf_app.gui.widgets import ErrorLabel
from crf_app.services import adverse_events as svc
from crf_app.services.context import UserContext

AWAITING = "(awaiting investigator assessment)"
CHOOSE_REL = "— choose —"


class AeDialog(QDialog):
    """A new adverse event (row None) or the correction of a saved one."""

    def __init__(self, ctx: UserContext, subject_id: int, row: svc.AeRow | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id = subject_id
        self.row = row
        self.saved_id: int | None = None
        info = self.info = svc.ae_form_context(ctx, subject_id)
        what = f"AE{row.sequence}" if row else "New adverse event"
        self.setWindowTitle(f"{what} — {info.screening_number}")
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        head = QLabel(f"<b>{what}</b> · Subject {info.screening_number}")
        head.setObjectName("StudyHeader")
        layout.addWidget(head)

        f = self.form = FieldForm(columns=2)
        self.term = f.add("term", "&Term", code_combo(AE_TERMS))
        self.verbatim = f.add("verbatim", "&Verbatim term", QLineEdit())
        self.verbatim.setPlaceholderText("as the subject described it (required for Other)")
        self.location = f.add("location", "&Location", code_combo(AE_LOCATIONS),
                              watch=(self.term,))
        self.start_date = f.add("start_date", "&Start date", QLineEdit())
        self.start_date.setPlaceholderText("YYYY-MM-DD")
        self.start_time = f.add("start_time", "Start t&ime", QLineEdit())
        self.start_time.setPlaceholderText("HH:MM (optional)")
        end = QWidget()
        end_lay = QHBoxLayout(end)
        end_lay.setContentsMargins(0, 0, 0, 0)
        self.end_date = QLineEdit()
        self.end_date.setPlaceholderText("YYYY-MM-DD")
        self.ongoing = QCheckBox("&Ongoing")
        end_lay.addWidget(self.end_date, 1)
        end_lay.addWidget(self.ongoing)
        f.add("end_date", "&End date", end, watch=(self.end_date, self.ongoing))
        self.treatment = f.add("treatment", "Treatment &given", QLineEdit())
        self.treatment.setPlaceholderText("optional")
        self.severity = f.add("severity", "Se&verity", code_combo(AE_SEVERITIES), column=1)
        self.grade = f.add("grade", "CTCAE &grade", code_combo(AE_GRADES), column=1)
        self.serious = f.add("serious", "Se&rious", code_combo(YES_NO), column=1)
        crit = QWidget()
        grid = QGridLayout(crit)
        grid.setContentsMargins(0, 0, 0, 0)
        self.criteria: dict[str, QCheckBox] = {}
        for i, (code, label) in enumerate(SERIOUSNESS_CRITERIA.items()):
            box = self.criteria[code] = QCheckBox(label)
            box.setObjectName(f"criteria_{code}")
            grid.addWidget(box, i // 2, i % 2)
        f.add("criteria", "Seriousness\ncriteria", crit,
              watch=(*self.criteria.values(), self.serious), column=1)
        self.relationship = f.add(
            "relationship", "Relations&hip to\nstudy drug",
            code_combo(AE_RELATIONSHIPS, CHOOSE_REL if info.can_assess else AWAITING), column=1)
        self.action = f.add("action", "&Action taken", code_combo(AE_ACTIONS), column=1)
        self.outcome = f.add("outcome", "O&utcome", code_combo(AE_OUTCOMES), column=1)
        layout.addWidget(f)
        reason_box = QFormLayout()
        self.reason = QLineEdit()
        self.reason.setObjectName("reason")
        self.reason.setPlaceholderText("required when you change saved values")
        self.reason_error = ErrorLabel()
        if row is not None:
            reason_box.addRow("Reason for &change", self.reason)
            reason_box.addRow("", self.reason_error)
        layout.addLayout(reason_box)
        self.flags_note = NoteLabel()
        self.form_error = ErrorLabel()
        self.summary = QLabel()
        self.summary.setObjectName("SubHeader")
        self.summary.setWordWrap(True)
        for w in (self.flags_note, self.form_error, self.summary):
            layout.addWidget(w)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Save")
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

        if not info.can_assess:
            self.relationship.setEnabled(False)
            self.relationship.setToolTip("Causality is assessed by the investigator")
        self.original = None
        if row is not None:
            self.set_input(svc.ae_input(row))
            # As saved (possibly not yet assessed): what a change is measured against.
            self.original = svc.check_ae(self.raw(), info.context, can_assess=False).value
            f.touched.update(f.widgets)
        f.changed.connect(self.revalidate)
        self.reason.textChanged.connect(self.revalidate)
        self.revalidate()

    # --- values ---------------------------------------------------------------------------
    def raw(self) -> AeInput:
        return AeInput(term=combo_code(self.term), verbatim=self.verbatim.text(),
                       location=combo_code(self.location), start_date=self.start_date.text(),
                       start_time=self.start_time.text(), end_date=self.end_date.text(),
                       ongoing=self.ongoing.isChecked(), severity=combo_code(self.severity),
                       grade=combo_code(self.grade), serious=combo_code(self.serious),
                       criteria=[c for c, box in self.criteria.items() if box.isChecked()],
                       relationship=combo_code(self.relationship),
                       action=combo_code(self.action), outcome=combo_code(self.outcome),
                       treatment=self.treatment.text())

    def set_input(self, raw: AeInput) -> None:
        set_combo(self.term, raw.term)
        self.verbatim.setText(raw.verbatim)
        set_combo(self.location, raw.location)
        self.start_date.setText(raw.start_date)
        self.start_time.setText(raw.start_time)
        self.end_date.setText(raw.end_date)
        self.ongoing.setChecked(raw.ongoing)
        for combo, code in ((self.severity, raw.severity), (self.grade, raw.grade),
                            (self.serious, raw.serious), (self.relationship, raw.relationship),
                            (self.action, raw.action), (self.outcome, raw.outcome)):
            set_combo(combo, code)
        for code, box in self.criteria.items():
            box.setChecked(code in raw.criteria)
        self.treatment.setText(raw.treatment)

    def needs_reason(self, value) -> bool:
        """Whether saving changes a saved value (an investigator's first assessment does not)."""
        if self.row is None:
            return False
        if self.original is None or value is None:
            return True
        for fld in fields(value):
            old, new = getattr(self.original, fld.name), getattr(value, fld.name)
            if old != new and not (fld.name == "relationship" and not old):
                return True
        return False

    # --- checking and saving --------------------------------------------------------------
    def revalidate(self, *_args, show_all: bool = False) -> list[FieldError]:
        result = svc.check_ae(self.raw(), self.info.context, self.info.can_assess)
        errors = list(result.errors)
        serious = combo_code(self.serious) == "Y"
        for box in self.criteria.values():
            box.setEnabled(serious or box.isChecked())
        reason_needed = self.needs_reason(result.value) and not self.reason.text().strip()
        self.reason_error.show_error(
            "A reason for change is required to change saved values" if reason_needed else "")
        other, notes = self.form.show_errors(errors, result.flags, show_all)
        self.flags_note.show_note("\n".join(f"Will be saved and flagged: {n}" for n in notes))
        self.form_error.show_error("\n".join(other))
        if errors:
            names = {e.field for e in errors}
            labels = [self.form.label_of(n) for n in self.form.widgets if n in names]
            self.summary.setText("To save, complete or correct: " + ", ".join(labels))
        else:
            self.summary.setText("Ready to save." if not reason_needed else "")
        self.ok_button.setEnabled(not errors and not reason_needed and self.info.can_edit)
        self.adjustSize()
        QTimer.singleShot(0, self.adjustSize)  # wrapped notes settle after one layout pass
        return errors

    def submit(self) -> None:
        if self.revalidate(show_all=True):
            return
        try:
            if self.row is None:
                self.saved_id = svc.record_adverse_event(self.ctx, self.subject_id, self.raw())
            else:
                svc.update_adverse_event(self.ctx, self.row.id, self.raw(), self.reason.text(),
                                         expected_version=self.row.row_version)
                self.saved_id = self.row.id
        except ReasonRequired as exc:
            self.reason_error.show_error(exc.errors[0].message)
            return
        except ValidationFailed as exc:
            other, _notes = self.form.show_errors(exc.errors, show_all=True)
            self.form_error.show_error("\n".join(other))
            return
        except CrfError as exc:
            self.form_error.show_error(f"Not saved: {exc}")
            return
        self.accept()


class SaeReportDialog(QDialog):
    """When the SAE report reached the sponsor (local time); stops the SAE clock."""

    def __init__(self, ctx: UserContext, row: svc.AeRow, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.row = row
        self.setWindowTitle(f"SAE report — {row.screening_number} AE{row.sequence}")
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        due = row.sae_deadline.astimezone().strftime("%Y-%m-%d %H:%M") if row.sae_deadline \
            else "—"
        intro = QLabel(f"<b>{row.term_label}</b> (grade {row.grade}) · report due {due} "
                       f"· {row.sae_label}<br>When was the SAE report sent to the sponsor?")
        intro.setWordWrap(True)
        intro.setMinimumWidth(440)
        layout.addWidget(intro)
        form = QFormLayout()
        start = row.sae_reported_at or ctx.now()
        self.when = QDateTimeEdit(QDateTime(start.astimezone().replace(tzinfo=None)))
        self.when.setObjectName("reported_at")
        self.when.setDisplayFormat("yyyy-MM-dd HH:mm")
        self.when.setCalendarPopup(True)
        self.when_error = ErrorLabel()
        form.addRow("&Sent at (local time)", self.when)
        form.addRow("", self.when_error)
        self.reason = QLineEdit()
        self.reason.setObjectName("reason")
        self.reason.setPlaceholderText("required to change a recorded time")
        self.reason_error = ErrorLabel()
        if row.sae_reported_at is not None:
            form.addRow("Reason for &change", self.reason)
            form.addRow("", self.reason_error)
        layout.addLayout(form)
        self.other_error = ErrorLabel()
        layout.addWidget(self.other_error)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.submit)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def reported_at(self) -> datetime:
        return self.when.dateTime().toPython().astimezone()

    def submit(self) -> None:
        for label in (self.when_error, self.reason_error, self.other_error):
            label.show_error("")
        try:
            svc.mark_sae_reported(self.ctx, self.row.id, self.reported_at(), self.reason.text())
        except ValidationFailed as exc:
            for e in exc.errors:
                (self.reason_error if e.field == "reason" else self.when_error).show_error(
                    e.message)
            return
        except CrfError as exc:
            self.other_error.show_error(str(exc))
            return
        self.accept()
