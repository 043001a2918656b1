"""Enrol a subject: every rule checked as the coordinator types, the service decides on save."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import FieldError, PermissionDenied, ValidationFailed
from crf_app.domain.subjects import SEXES, Enrollment, check_enrollment
from crf_app.gui.widgets import DateEdit, ErrorLabel, mark_invalid
from crf_app.services.context import UserContext
from crf_app.services.subjects import enroll_subject


class EnrollDialog(QDialog):
    def __init__(self, ctx: UserContext, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id: int | None = None
        self.setWindowTitle("Enrol subject")
        self.setMinimumWidth(460)
        protocol = ctx.study.protocol
        today = ctx.today()

        self.screening_number = QLineEdit()
        self.screening_number.setPlaceholderText("e.g. S01-013")
        self.site = QComboBox()
        for s in protocol.sites:
            if ctx.user.site_code in (None, s.code):
                self.site.addItem(f"{s.code} — {s.name}", s.code)
        self.initials = QLineEdit()
        self.initials.setMaxLength(3)
        self.initials.setPlaceholderText("e.g. ABC (never a name)")
        self.birth_year = QSpinBox()
        self.birth_year.setRange(1900, today.year)
        self.birth_year.setValue(1960)
        self.sex = QComboBox()
        self.sex.addItem("", "")
        for code, label in SEXES.items():
            self.sex.addItem(label, code)
        self.arm = QComboBox()
        for a in protocol.arms:
            self.arm.addItem(f"{a.code} — {a.name}", a.code)
        self.consent_date = DateEdit(today)
        self.enrolled_on = DateEdit(today)
        self.has_baseline = QCheckBox("Baseline (day 1) date known — schedule the visits")
        self.baseline_date = DateEdit(today)
        self.baseline_date.setEnabled(False)

        self.fields: dict[str, QWidget] = {
            "screening_number": self.screening_number, "site": self.site,
            "initials": self.initials, "birth_year": self.birth_year, "sex": self.sex,
            "arm": self.arm, "consent_date": self.consent_date, "enrolled_on": self.enrolled_on,
            "baseline_date": self.baseline_date,
        }
        self.errors = {name: ErrorLabel() for name in self.fields}
        labels = {"screening_number": "&Screening number", "site": "Si&te",
                  "initials": "&Initials", "birth_year": "&Year of birth", "sex": "Se&x",
                  "arm": "&Arm", "consent_date": "Informed &consent date",
                  "enrolled_on": "&Enrolment date", "baseline_date": "&Baseline date"}
        form = QFormLayout()
        for name, widget in self.fields.items():
            if name == "baseline_date":
                form.addRow("", self.has_baseline)
            box = QVBoxLayout()
            box.setSpacing(1)
            box.addWidget(widget)
            box.addWidget(self.errors[name])
            label = QLabel(labels[name])
            label.setBuddy(widget)
            form.addRow(label, box)
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        layout.addLayout(form)
        self.form_error = ErrorLabel()
        layout.addWidget(self.form_error)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Enrol")
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

        self.screening_number.textEdited.connect(
            lambda t: self.screening_number.setText(t.upper()))
        self.initials.textEdited.connect(lambda t: self.initials.setText(t.upper()))
        for w in (self.screening_number, self.initials):
            w.textChanged.connect(self.revalidate)
        for w in (self.site, self.sex, self.arm):
            w.currentIndexChanged.connect(self.revalidate)
        self.birth_year.valueChanged.connect(self.revalidate)
        for w in (self.consent_date, self.enrolled_on, self.baseline_date):
            w.dateChanged.connect(self.revalidate)
        self.has_baseline.toggled.connect(self.baseline_date.setEnabled)
        self.has_baseline.toggled.connect(self.revalidate)
        self._touched: set[str] = set()
        for name, w in self.fields.items():
            w.installEventFilter(self)
            w.setObjectName(name)
        self.revalidate()

    def eventFilter(self, obj, event):
        from PySide6.QtCore import QEvent

        if event.type() == QEvent.Type.FocusOut and obj.objectName() in self.fields:
            self._touched.add(obj.objectName())
            self.revalidate()
        return super().eventFilter(obj, event)

    def enrollment(self) -> Enrollment:
        return Enrollment(
            screening_number=self.screening_number.text().strip(),
            site=self.site.currentData() or "",
            initials=self.initials.text().strip(),
            birth_year=self.birth_year.value(),
            sex=self.sex.currentData() or "",
            arm=self.arm.currentData() or "",
            consent_date=self.consent_date.value(),
            enrolled_on=self.enrolled_on.value(),
            baseline_date=self.baseline_date.value() if self.has_baseline.isChecked() else None,
        )

    def revalidate(self, *_args, show_all: bool = False) -> list[FieldError]:
        """Check every rule; show errors on fields the user has visited (or all on submit)."""
        errors = check_enrollment(self.enrollment(), self.ctx.study.protocol, self.ctx.today())
        self._show(errors, show_all)
        self.ok_button.setEnabled(not errors)
        return errors

    def _show(self, errors: list[FieldError], show_all: bool) -> None:
        by_field: dict[str, str] = {}
        for e in errors:
            by_field.setdefault(e.field, e.message)
        for name, label in self.errors.items():
            changed = name in self._touched or show_all or self._has_input(name)
            message = by_field.get(name, "") if changed else ""
            label.show_error(message)
            mark_invalid(self.fields[name], bool(message))
        self.adjustSize()

    def _has_input(self, name: str) -> bool:
        w = self.fields[name]
        if isinstance(w, QLineEdit):
            return bool(w.text())
        return name not in ("sex",) or bool(self.sex.currentData())

    def submit(self) -> None:
        if self.revalidate(show_all=True):
            return
        try:
            self.subject_id = enroll_subject(self.ctx, self.enrollment())
        except ValidationFailed as exc:
            self._show(exc.errors, True)
            unplaced = [e.message for e in exc.errors if e.field not in self.fields]
            self.form_error.show_error("\n".join(unplaced))
            return
        except PermissionDenied as exc:
            self.form_error.show_error(str(exc))
            return
        self.accept()
