"""Table models of the two logs: a subject's adverse events and dosing records.

Both hold the plain rows the services return (never ORM objects) and their display text.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, time
from typing import Any, Generic, TypeVar

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor

from crf_app.domain.adverse_events import AE_OUTCOMES, AE_RELATIONSHIPS, AE_SEVERITIES
from crf_app.domain.dosing import GIVEN_BY, NOSTRILS
from crf_app.services.adverse_events import AeRow
from crf_app.services.dosing import DoseRow

_Index = QModelIndex | QPersistentModelIndex
RowRole = Qt.ItemDataRole.UserRole + 1
# CTCAE grade colours, used by the table and the course timeline alike.
GRADE_COLOURS = {1: "#7fb069", 2: "#e6b325", 3: "#e07a1f", 4: "#c0392b", 5: "#4a1010"}
RED, AMBER, GREY = "#b42318", "#b54708", "#8894a7"
R = TypeVar("R")


def _d(value: date | None) -> str:
    return value.isoformat() if value else ""


def _t(value: time | None) -> str:
    return value.strftime("%H:%M") if value else ""


class _RowsModel(QAbstractTableModel, Generic[R]):
    HEADERS: list[str] = []

    def __init__(self, parent=None):
        super().__init__(parent)
        self._rows: list[R] = []
        self._text: list[list[str]] = []

    def _texts(self, row: R) -> list[str]:
        raise NotImplementedError

    def set_rows(self, rows: list[R]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self._text = [self._texts(r) for r in self._rows]
        self.endResetModel()

    def row(self, i: int) -> R:
        return self._rows[i]

    def rows(self) -> list[R]:
        return list(self._rows)

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal \
                and 0 <= section < len(self.HEADERS):
            return self.HEADERS[section]
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        r, c = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text[r][c]
        if role == RowRole:
            return self._rows[r]
        extra: Callable[[R, int, int], Any] = self._extra
        return extra(self._rows[r], c, role)

    def _extra(self, row: R, column: int, role: int) -> Any:
        return None


class AeTableModel(_RowsModel[AeRow]):
    """A subject's adverse events: term, dates, grade, seriousness, causality, SAE clock."""

    HEADERS = ["AE", "Term", "Start", "End", "Grade", "Severity", "Serious", "Relationship",
               "Outcome", "Flags", "SAE report"]
    GRADE, SERIOUS, RELATIONSHIP, FLAGS, SAE = 4, 6, 7, 9, 10

    def _texts(self, r: AeRow) -> list[str]:
        start = _d(r.start_date) + (f" {_t(r.start_time)}" if r.start_time else "")
        return [f"AE{r.sequence}", r.term_label, start,
                "ongoing" if r.ongoing else _d(r.end_date), str(r.grade),
                AE_SEVERITIES.get(r.severity, r.severity), "Yes" if r.serious else "No",
                AE_RELATIONSHIPS.get(r.relationship or "", "not yet assessed"),
                AE_OUTCOMES.get(r.outcome, r.outcome),
                ", ".join(f.replace("_", " ") for f in r.flags),
                r.sae_label if r.serious else ""]

    def _extra(self, r: AeRow, c: int, role: int) -> Any:
        if role == Qt.ItemDataRole.BackgroundRole and c == self.GRADE:
            return QBrush(QColor(GRADE_COLOURS.get(r.grade, "#ffffff")))
        if role == Qt.ItemDataRole.ForegroundRole:
            if c == self.GRADE:
                return QBrush(QColor("#ffffff" if r.grade >= 3 else "#1a202c"))
            if c == self.SAE and r.sae_state in ("running", "overdue"):
                return QBrush(QColor(RED))
            if c == self.SERIOUS and r.serious:
                return QBrush(QColor(RED))
            if c == self.FLAGS and r.flags:
                return QBrush(QColor(AMBER))
            if c == self.RELATIONSHIP and r.relationship is None:
                return QBrush(QColor(GREY))
        if role == Qt.ItemDataRole.ToolTipRole:
            if c == self.FLAGS and r.flag_text:
                return "\n".join(r.flag_text)
            if c == self.SAE and r.sae_deadline is not None:
                return (f"Report due {r.sae_deadline.astimezone():%Y-%m-%d %H:%M} (local time)"
                        + (f"; reported {r.sae_reported_at.astimezone():%Y-%m-%d %H:%M}"
                           if r.sae_reported_at else ""))
            if c == 1 and r.verbatim:
                return f"Verbatim: {r.verbatim}"
            if c == self.RELATIONSHIP and r.relationship is None:
                return "Causality is assessed by the investigator"
        return None


class DoseTableModel(_RowsModel[DoseRow]):
    """A subject's dosing records, with missed doses and open queries marked."""

    HEADERS = ["Date", "Day", "Time", "Dose (mg)", "Instil.", "Total (mg)", "Nostril", "Lot",
               "Given by", "Queries", "Missed dose"]
    QUERIES, MISSED, TIME = 9, 10, 2

    def _texts(self, r: DoseRow) -> list[str]:
        return [_d(r.date), "" if r.study_day is None else str(r.study_day), _t(r.time),
                "" if r.dose_mg is None else format(r.dose_mg, "f"),
                "" if r.missed else str(r.instillations),
                "" if r.missed else format(r.total_mg.normalize(), "f"),
                NOSTRILS.get(r.nostril, r.nostril), r.lot, GIVEN_BY.get(r.given_by, r.given_by),
                f"{len(r.open_queries)} open" if r.open_queries else "",
                f"Missed: {r.missed_reason}" if r.missed else ""]

    def _extra(self, r: DoseRow, c: int, role: int) -> Any:
        if role == Qt.ItemDataRole.ForegroundRole:
            if c == self.QUERIES and r.open_queries:
                return QBrush(QColor(RED))
            if c == self.MISSED and r.missed:
                return QBrush(QColor(AMBER))
            if c == self.TIME and r.warnings:
                return QBrush(QColor(AMBER))
        if role == Qt.ItemDataRole.ToolTipRole:
            if c == self.QUERIES and r.open_queries:
                return "\n".join(r.open_queries)
            if c == self.TIME and "late_dose" in r.warnings:
                return "Given after 18:00: the product can disturb sleep"
        return None
