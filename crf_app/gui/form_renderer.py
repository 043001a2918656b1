"""Builds a form's widgets from its definition; applies branching, totals and messages live."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.forms import FormDef, FormResult, ItemDef, display_value, validate_form
from crf_app.gui.form_editors import ItemEditor, make_editor


def item_label(item: ItemDef) -> str:
    text = item.label + (f" ({item.unit})" if item.unit else "")
    return text + (" *" if item.required else "")


class MessageLabel(QLabel):
    """Errors (red), warnings that will raise a query (amber), open queries (blue)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.hide()

    def show_messages(self, errors: list[str], warnings: list[str], queries: list[str]) -> None:
        from html import escape

        parts = [f'<span style="color:#b42318">✖ {escape(m)}</span>' for m in errors]
        parts += [f'<span style="color:#b54708">▲ {escape(m)} (a query will be raised)</span>'
                  for m in warnings]
        parts += [f'<span style="color:#1f4e79">⚑ Open query: {escape(m)}</span>'
                  for m in queries]
        self.setText("<br>".join(parts))
        self.setVisible(bool(parts))


class RowTable(QWidget):
    """A repeating section: one line of editors per row, with Add row / Remove."""

    changed = Signal()

    def __init__(self, section, parent: QWidget | None = None):
        super().__init__(parent)
        self.section = section
        self.rows: list[dict[str, ItemEditor]] = []
        self.messages: list[MessageLabel] = []
        self._remove_buttons: list[QPushButton] = []
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.grid = QGridLayout()
        for c, item in enumerate(section.items):
            head = QLabel(f"<b>{item_label(item)}</b>")
            head.setToolTip(item.help)
            head.setWordWrap(True)
            self.grid.addWidget(head, 0, c)
        outer.addLayout(self.grid)
        self.add_button = QPushButton(f"+ Add row to {section.title.lower()}")
        self.add_button.setObjectName(f"add_{section.id}")
        self.add_button.setAutoDefault(False)
        self.add_button.clicked.connect(lambda: (self.add_row(), self.changed.emit()))
        outer.addWidget(self.add_button, 0, Qt.AlignmentFlag.AlignLeft)

    def add_row(self, values: dict[str, Any] | None = None) -> dict[str, ItemEditor]:
        r = len(self.rows)
        editors = {}
        line = 1 + 2 * r
        for c, item in enumerate(self.section.items):
            ed = make_editor(item)
            ed.setObjectName(f"item_{item.id}_{r}")
            ed.set_value((values or {}).get(item.id))
            ed.changed.connect(self.changed)
            self.grid.addWidget(ed, line, c)
            editors[item.id] = ed
        remove = QPushButton("Remove")
        remove.setObjectName(f"remove_{self.section.id}_{r}")
        remove.clicked.connect(lambda _=False, row=r: self.remove_row(row))
        self.grid.addWidget(remove, line, len(self.section.items))
        msg = MessageLabel()
        self.grid.addWidget(msg, line + 1, 0, 1, len(self.section.items) + 1)
        self.rows.append(editors)
        self.messages.append(msg)
        self._remove_buttons.append(remove)
        if self.section.max_rows is not None:
            self.add_button.setEnabled(len(self.rows) < self.section.max_rows)
        return editors

    def remove_row(self, row: int) -> None:
        values = self.values()
        del values[row]
        self.set_values(values)
        self.changed.emit()

    def values(self) -> list[dict[str, Any]]:
        return [{k: ed.value() for k, ed in row.items()} for row in self.rows]

    def set_values(self, rows: list[dict[str, Any]]) -> None:
        for row, msg, button in zip(self.rows, self.messages, self._remove_buttons, strict=True):
            for ed in row.values():
                ed.setParent(None)
                ed.deleteLater()
            msg.setParent(None)
            msg.deleteLater()
            button.setParent(None)
            button.deleteLater()
        self.rows, self.messages, self._remove_buttons = [], [], []
        for values in rows:
            self.add_row(values)


class FormRenderer(QWidget):
    """The widgets of one form. `changed` fires on every edit; `result` is the live check."""

    changed = Signal()

    def __init__(self, form: FormDef, parent: QWidget | None = None):
        super().__init__(parent)
        self.form = form
        self.editors: dict[str, ItemEditor] = {}
        self.messages: dict[str, MessageLabel] = {}
        self.layouts: dict[str, QFormLayout] = {}
        self.tables: dict[str, RowTable] = {}
        self.queries: dict[tuple[str, int], list[str]] = {}
        self.result = FormResult()
        self._loading = False
        layout = QVBoxLayout(self)
        for section in form.sections:
            box = QGroupBox(section.title)
            box.setObjectName(f"section_{section.id}")
            inner = QVBoxLayout(box)
            if section.help:
                help_label = QLabel(section.help)
                help_label.setWordWrap(True)
                help_label.setObjectName("SubHeader")
                inner.addWidget(help_label)
            if section.repeating:
                table = RowTable(section)
                table.changed.connect(self._on_change)
                self.tables[section.id] = table
                inner.addWidget(table)
            else:
                fl = QFormLayout()
                fl.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
                for item in section.items:
                    label = QLabel(item_label(item))
                    label.setWordWrap(len(label.text()) > 34)
                    label.setToolTip(item.help)
                    ed = make_editor(item)
                    ed.setToolTip(item.help)
                    ed.changed.connect(self._on_change)
                    msg = MessageLabel()
                    cell = QWidget()
                    cell_layout = QVBoxLayout(cell)
                    cell_layout.setContentsMargins(0, 0, 0, 0)
                    cell_layout.setSpacing(1)
                    cell_layout.addWidget(ed)
                    cell_layout.addWidget(msg)
                    label.setBuddy(ed.focus_widget())
                    fl.addRow(label, cell)
                    self.editors[item.id] = ed
                    self.messages[item.id] = msg
                    self.layouts[item.id] = fl
                inner.addLayout(fl)
            layout.addWidget(box)
        layout.addStretch(1)
        self.refresh()

    # --- values -----------------------------------------------------------------------------
    def raw(self) -> dict[str, Any]:
        """What the user typed, in the engine's raw shape."""
        out: dict[str, Any] = {iid: ed.value() for iid, ed in self.editors.items()
                               if not ed.item.is_computed}
        for sid, table in self.tables.items():
            out[sid] = table.values()
        return out

    def set_raw(self, raw: dict[str, Any]) -> None:
        self._loading = True
        try:
            for iid, ed in self.editors.items():
                ed.set_value(raw.get(iid))
            for sid, table in self.tables.items():
                table.set_values(list(raw.get(sid) or []))
        finally:
            self._loading = False
        self.refresh()

    def set_queries(self, queries: dict[tuple[str, int], list[str]]) -> None:
        self.queries = queries
        self.refresh()

    def set_read_only(self, read_only: bool) -> None:
        for ed in self.editors.values():
            ed.set_read_only(read_only)
        for table in self.tables.values():
            table.setEnabled(not read_only)

    # --- live checking ----------------------------------------------------------------------
    def _on_change(self) -> None:
        if self._loading:
            return
        self.refresh()
        self.changed.emit()

    def refresh(self, complete: bool = False) -> FormResult:
        """Validate what is on screen; show totals, branching and messages."""
        self.result = validate_form(self.form, self.raw(), complete=complete)
        res = self.result
        for iid, ed in self.editors.items():
            hidden = iid in res.hidden
            self.layouts[iid].setRowVisible(ed.parentWidget(), not hidden)
            if ed.item.is_computed:
                value = res.computed.get(iid)
                if isinstance(value, str) and ed.item.codes:
                    value = display_value(ed.item, value)  # "Yes", not "Y"
                ed.set_value(value if isinstance(value, str) else "")
            errs = [i.message for i in res.errors if i.row is None and iid == i.item_id]
            warns = [i.message for i in res.warnings if i.row is None and iid == i.item_id]
            self.messages[iid].show_messages(errs, warns, self.queries.get((iid, 0), []))
        for sid, table in self.tables.items():
            for r, editors in enumerate(table.rows):
                for iid, ed in editors.items():
                    ed.setVisible(not res.is_hidden(iid, r))
                    if ed.item.is_computed:
                        rows = res.computed.get(sid) or []
                        value = rows[r].get(iid) if isinstance(rows, list) and r < len(rows) \
                            else None
                        ed.set_value(value or "")
                errs = [i.message for i in res.errors if i.row == r and i.item_id in editors]
                warns = [i.message for i in res.warnings if i.row == r and i.item_id in editors]
                queries = [m for iid in editors for m in self.queries.get((iid, r), [])]
                table.messages[r].show_messages(errs, warns, queries)
        return res

    def first_problem_widget(self) -> QWidget | None:
        for issue in self.result.errors:
            if issue.row is None and issue.item_id in self.editors:
                return self.editors[issue.item_id].focus_widget()
        return None
