"""The visit × form matrix of a subject: a colour and a symbol per form status."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor

from crf_app.services.forms import STATUS_LABELS, FormMatrix

_Index = QModelIndex | QPersistentModelIndex
SYMBOLS = {"not_started": "○", "in_progress": "◐", "complete": "●", "verified": "✔",
           "signed": "✍", "locked": "■"}
COLOURS = {"not_started": "#ffffff", "in_progress": "#fff4d6", "complete": "#dcf2e3",
           "verified": "#d6e8fa", "signed": "#e7defa", "locked": "#e4e7ec"}
CellRole = Qt.ItemDataRole.UserRole + 2


class FormMatrixModel(QAbstractTableModel):
    """Rows: the subject's visits. Columns: every form of the schedule. Empty: not scheduled."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.matrix = FormMatrix([], [], {})

    def set_matrix(self, matrix: FormMatrix) -> None:
        self.beginResetModel()
        self.matrix = matrix
        self.endResetModel()

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.matrix.visits)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.matrix.forms)

    def cell(self, row: int, column: int):
        visit_id = self.matrix.visits[row][0]
        return self.matrix.cells.get((visit_id, self.matrix.forms[column][0]))

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        cell = self.cell(index.row(), index.column())
        if cell is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            badge = f" ⚑{cell.open_queries}" if cell.open_queries else ""
            return SYMBOLS.get(cell.status, "?") + badge
        if role == Qt.ItemDataRole.BackgroundRole:
            return QBrush(QColor(COLOURS.get(cell.status, "#ffffff")))
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = f"{self.matrix.forms[index.column()][1]}: {STATUS_LABELS.get(cell.status)}"
            if cell.open_queries:
                tip += f" · {cell.open_queries} open quer{'y' if cell.open_queries == 1 else 'ies'}"
            return tip
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignCenter)
        if role == CellRole:
            return cell
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self.matrix.forms[section][1]
        return self.matrix.visits[section][2]

    def legend(self) -> str:
        return "   ".join(f"{SYMBOLS[k]} {STATUS_LABELS[k]}" for k in
                          ("not_started", "in_progress", "complete", "verified", "signed",
                           "locked")) + "   ⚑ open queries"
