"""Merge conflicts (a value changed here and on another laptop): the list and their resolution."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import CrfError
from crf_app.domain.roles import Action, allowed
from crf_app.gui.widgets import ErrorLabel
from crf_app.services.context import UserContext
from crf_app.services.odm_import import ConflictRow, list_conflicts, resolve_conflict

_Index = QModelIndex | QPersistentModelIndex


def _when(row_at) -> str:
    return row_at.astimezone().strftime("%Y-%m-%d %H:%M") if row_at else ""


class ConflictTableModel(QAbstractTableModel):
    HEADERS = ["#", "Subject", "Site", "Visit", "Form", "Item / field", "Local value",
               "Changed here by", "Incoming value", "Changed there by", "File", "State"]

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[ConflictRow] = []

    def set_rows(self, rows: list[ConflictRow]) -> None:
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        c = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            field = c.field + (f" [row {c.row + 1}]" if c.row else "")
            state = c.state if c.state != "resolved" else f"resolved ({c.resolution})"
            return [str(c.id), c.subject, c.site, c.visit, c.form, field,
                    c.local_value or "(empty)",
                    f"{c.local_user or '?'} {_when(c.local_at)}".strip(),
                    c.incoming_value or "(empty)",
                    f"{c.incoming_user or '?'} {_when(c.incoming_at)}".strip(),
                    c.file_oid, state][index.column()]
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None


class ConflictsDialog(QDialog):
    """Open (or all) merge conflicts; a data manager keeps the local value or takes the
    incoming one, with an optional reason. Each choice is audited by the service."""

    def __init__(self, ctx: UserContext, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.setWindowTitle("Merge conflicts")
        self.resize(1200, 520)
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.state = QComboBox()
        for label, code in [("Open", "open"), ("Resolved", "resolved"), ("All", "")]:
            self.state.addItem(label, code)
        top.addWidget(QLabel("Show"))
        top.addWidget(self.state)
        top.addStretch(1)
        self.count = QLabel()
        top.addWidget(self.count)
        layout.addLayout(top)
        self.model = ConflictTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("conflictTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.table, 1)
        self.reason = QLineEdit()
        self.reason.setPlaceholderText("Reason for the choice (recorded in the audit trail)")
        layout.addWidget(self.reason)
        self.error = ErrorLabel()
        layout.addWidget(self.error)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.keep_button = QPushButton("Keep &local value")
        self.take_button = QPushButton("Take &incoming value")
        buttons.addWidget(self.keep_button)
        buttons.addWidget(self.take_button)
        layout.addLayout(buttons)
        self.keep_button.clicked.connect(lambda: self.resolve("local"))
        self.take_button.clicked.connect(lambda: self.resolve("incoming"))
        self.state.currentIndexChanged.connect(self.refresh)
        self.table.selectionModel().selectionChanged.connect(self._enable)
        self.refresh()

    def refresh(self) -> None:
        rows = list_conflicts(self.ctx, state=self.state.currentData() or None)
        self.model.set_rows(rows)
        self.count.setText(f"{len(rows)} conflicts")
        self._enable()

    def selected(self) -> ConflictRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.rows[rows[0].row()] if rows else None

    def _enable(self, *_a) -> None:
        c = self.selected()
        role = self.ctx.user.role
        can = bool(c) and c.state == "open" and allowed(role, Action.IMPORT) and \
            allowed(role, Action.CLOSE_QUERY)
        self.keep_button.setEnabled(can)
        self.take_button.setEnabled(can)

    def resolve(self, choice: str) -> None:
        c = self.selected()
        if c is None:
            return
        try:
            resolve_conflict(self.ctx, c.id, choice, self.reason.text())
        except CrfError as exc:
            self.error.show_error(str(exc))
            return
        self.error.show_error("")
        self.reason.clear()
        self.refresh()


def show_conflicts(parent: QWidget | None, ctx: UserContext) -> None:
    """Open the merge-conflicts list (modal)."""
    ConflictsDialog(ctx, parent).exec()
