"""One input widget per item type, all with the same small interface (value / set_value)."""

from __future__ import annotations

from PySide6.QtCore import QDate, Signal
from PySide6.QtWidgets import (
    QCalendarWidget,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLineEdit,
    QMenu,
    QToolButton,
    QWidget,
    QWidgetAction,
)

from crf_app.domain.forms import ItemDef

PLACEHOLDERS = {
    "integer": "whole number", "decimal": "number", "date": "YYYY-MM-DD",
    "partial_date": "YYYY, YYYY-MM or YYYY-MM-DD", "time": "HH:MM (24 h)",
    "datetime": "YYYY-MM-DDTHH:MM",
}
RawValue = str | list[str] | None


class ItemEditor(QWidget):
    """Common interface: `changed` signal, `value()`, `set_value()`, `focus_widget()`."""

    changed = Signal()

    def __init__(self, item: ItemDef, parent: QWidget | None = None):
        super().__init__(parent)
        self.item = item
        self.setObjectName(f"item_{item.id}")
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)

    def value(self) -> RawValue:
        raise NotImplementedError

    def set_value(self, value: RawValue) -> None:
        raise NotImplementedError

    def focus_widget(self) -> QWidget:
        return self

    def set_read_only(self, read_only: bool) -> None:
        self.setEnabled(not read_only)


class LineEditor(ItemEditor):
    """Text, numbers, partial dates, times: typed freely, checked by the engine."""

    def __init__(self, item: ItemDef, parent: QWidget | None = None):
        super().__init__(item, parent)
        self.edit = QLineEdit()
        self.edit.setObjectName(f"edit_{item.id}")
        if item.type == "text":
            self.edit.setMaxLength(item.text_limit)
        self.edit.setPlaceholderText(PLACEHOLDERS.get(item.type, ""))
        narrow = item.type != "text" or item.is_computed or item.text_limit <= 20
        if narrow:
            self.edit.setMaximumWidth(180 if item.type in ("partial_date", "datetime") else 140)
        self.edit.textChanged.connect(self.changed)
        self._layout.addWidget(self.edit)
        if narrow and type(self) is LineEditor:
            self._layout.addStretch(1)
        if item.is_computed:
            self.edit.setReadOnly(True)
            self.edit.setFocusPolicy(self.edit.focusPolicy().NoFocus)
            self.edit.setObjectName(f"computed_{item.id}")
            self.edit.setPlaceholderText("computed")
        self.setFocusProxy(self.edit)

    def value(self) -> RawValue:
        return self.edit.text()

    def set_value(self, value: RawValue) -> None:
        self.edit.setText(value if isinstance(value, str) else "")

    def focus_widget(self) -> QWidget:
        return self.edit

    def set_read_only(self, read_only: bool) -> None:
        self.edit.setReadOnly(read_only or self.item.is_computed)


class DateEditor(LineEditor):
    """A date typed as YYYY-MM-DD, or picked from a calendar (the button beside it)."""

    def __init__(self, item: ItemDef, parent: QWidget | None = None):
        super().__init__(item, parent)
        self.edit.setMaximumWidth(140)
        self.button = QToolButton()
        self.button.setText("▾")
        self.button.setToolTip("Pick a date")
        self.button.setFocusPolicy(self.button.focusPolicy().NoFocus)
        self.button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.button)
        self.calendar = QCalendarWidget()
        self.calendar.clicked.connect(self._picked)
        act = QWidgetAction(menu)
        act.setDefaultWidget(self.calendar)
        menu.addAction(act)
        self.button.setMenu(menu)
        self._layout.addWidget(self.button)
        self._layout.addStretch(1)

    def _picked(self, day: QDate) -> None:
        self.edit.setText(day.toString("yyyy-MM-dd"))
        self.button.menu().hide()


class ChoiceEditor(ItemEditor):
    """Choices and yes/no as a combo box: type the first letter or digit to choose."""

    def __init__(self, item: ItemDef, parent: QWidget | None = None):
        super().__init__(item, parent)
        self.combo = QComboBox()
        self.combo.setObjectName(f"choice_{item.id}")
        self.combo.addItem("", "")
        for code in item.codes:
            text = code.label if item.type == "yes_no" or code.label.startswith(code.code) \
                else f"{code.code} — {code.label}"
            self.combo.addItem(text, code.code)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.combo.currentIndexChanged.connect(self.changed)
        self._layout.addWidget(self.combo)
        self._layout.addStretch(1)
        self.setFocusProxy(self.combo)

    def value(self) -> RawValue:
        return self.combo.currentData() or ""

    def set_value(self, value: RawValue) -> None:
        idx = self.combo.findData(value if isinstance(value, str) else "")
        self.combo.setCurrentIndex(max(idx, 0))

    def focus_widget(self) -> QWidget:
        return self.combo


class MultiChoiceEditor(ItemEditor):
    """A check list: one box per code (Space toggles, Tab moves on)."""

    def __init__(self, item: ItemDef, parent: QWidget | None = None):
        super().__init__(item, parent)
        self.boxes: dict[str, QCheckBox] = {}
        for code in item.codes:
            box = QCheckBox(code.label)
            box.setObjectName(f"check_{item.id}_{code.code}")
            box.toggled.connect(self.changed)
            self.boxes[code.code] = box
            self._layout.addWidget(box)
        self._layout.addStretch(1)
        if self.boxes:
            self.setFocusProxy(next(iter(self.boxes.values())))

    def value(self) -> RawValue:
        return [c for c, b in self.boxes.items() if b.isChecked()]

    def set_value(self, value: RawValue) -> None:
        chosen = set(value.split("|")) if isinstance(value, str) and value else set(value or [])
        for code, box in self.boxes.items():
            box.setChecked(code in chosen)

    def set_read_only(self, read_only: bool) -> None:
        for b in self.boxes.values():
            b.setEnabled(not read_only)


def make_editor(item: ItemDef, parent: QWidget | None = None) -> ItemEditor:
    if item.is_computed:
        return LineEditor(item, parent)
    if item.type == "date":
        return DateEditor(item, parent)
    if item.type in ("choice", "yes_no"):
        return ChoiceEditor(item, parent)
    if item.type == "multi_choice":
        return MultiChoiceEditor(item, parent)
    return LineEditor(item, parent)
