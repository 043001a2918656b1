"""The pieces shared by the AE and dosing dialogs: code combos and a form of fields whose
broken rules show in red under each field, findings and flags in amber."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import FieldError
from crf_app.gui.widgets import ErrorLabel, mark_invalid

CHOOSE = "— choose —"
NOTE_STYLE = "color: #b54708;"


def code_combo(codelist: Mapping[str, str], empty: str | None = CHOOSE) -> QComboBox:
    """A combo of a codelist's labels, holding the codes as item data ('' for the blank)."""
    combo = QComboBox()
    if empty is not None:
        combo.addItem(empty, "")
    for code, label in codelist.items():
        combo.addItem(label, code)
    return combo


def combo_code(combo: QComboBox) -> str:
    return combo.currentData() or ""


def set_combo(combo: QComboBox, code: str) -> None:
    i = combo.findData(code or "")
    combo.setCurrentIndex(i if i >= 0 else 0)


class NoteLabel(QLabel):
    """An amber note under a field: saved, but flagged or queried."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("FieldNote")
        self.setStyleSheet(NOTE_STYLE)
        self.setWordWrap(True)
        self.hide()

    def show_note(self, message: str) -> None:
        self.setText(message)
        self.setVisible(bool(message))


class FieldForm(QWidget):
    """Labelled fields, each with its red error line and amber note line beneath.

    An error shows once its field was changed (or for every field with `show_all`), so an
    empty new form is not covered in red before the user has typed anything.
    """

    changed = Signal()

    def __init__(self, columns: int = 1, parent: QWidget | None = None):
        super().__init__(parent)
        outer = QHBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(18)
        self.forms: list[QFormLayout] = []
        for _ in range(columns):
            form = QFormLayout()
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            outer.addLayout(form, 1)
            self.forms.append(form)
        self.widgets: dict[str, QWidget] = {}
        self.errors: dict[str, ErrorLabel] = {}
        self.notes: dict[str, NoteLabel] = {}
        self.touched: set[str] = set()
        self._form_of: dict[str, QFormLayout] = {}
        self._labels: dict[str, str] = {}

    def add(self, name: str, label: str, widget: QWidget, *, watch: Iterable[QWidget] = (),
            column: int = 0) -> QWidget:
        """Add a field; changes of the widget and of those in `watch` touch it."""
        widget.setObjectName(name)
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(1)
        lay.addWidget(widget)
        self.errors[name] = ErrorLabel()
        self.notes[name] = NoteLabel()
        lay.addWidget(self.errors[name])
        lay.addWidget(self.notes[name])
        text = QLabel(label)
        text.setBuddy(widget)
        self._labels[name] = " ".join(label.replace("&", "").split())
        self.forms[column].addRow(text, box)
        self._form_of[name] = self.forms[column]
        self.widgets[name] = widget
        for w in (widget, *watch):
            self.watch(name, w)
        return widget

    def watch(self, name: str, w: QWidget) -> None:
        """Changes of `w` touch field `name` (show its errors) and re-check the form."""
        def touched(*_args) -> None:
            self.touched.add(name)
            self.changed.emit()

        if isinstance(w, QLineEdit):
            w.textChanged.connect(touched)
        elif isinstance(w, QComboBox):
            w.currentIndexChanged.connect(touched)
        elif isinstance(w, QCheckBox):
            w.toggled.connect(touched)

    def label_of(self, name: str) -> str:
        """The field's label as plain text (no mnemonic, one line)."""
        return self._labels.get(name, name)

    def set_row_visible(self, name: str, visible: bool) -> None:
        self._form_of[name].setRowVisible(self.widgets[name].parentWidget(), visible)

    def show_errors(self, errors: list[FieldError], notes: Iterable[FieldError] = (),
                    show_all: bool = False) -> tuple[list[str], list[str]]:
        """Show each message under its field; returns the errors and notes no field shows."""
        by_field: dict[str, list[str]] = {}
        other_errors = []
        for e in errors:
            if e.field in self.errors:
                by_field.setdefault(e.field, []).append(e.message)
            else:
                other_errors.append(e.message)
        for name, label in self.errors.items():
            shown = name in self.touched or show_all
            message = "\n".join(by_field.get(name, [])) if shown else ""
            label.show_error(message)
            mark_invalid(self.widgets[name], bool(message))
        note_by: dict[str, list[str]] = {}
        other_notes = []
        for n in notes:
            if n.field in self.notes:
                note_by.setdefault(n.field, []).append(n.message)
            else:
                other_notes.append(n.message)
        for name, note in self.notes.items():
            note.show_note("\n".join(note_by.get(name, [])))
        return other_errors, other_notes
