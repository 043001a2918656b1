"""The study's query list (filter by site, subject, state, age, origin) and a query's thread."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from crf_app.domain.errors import CrfError
from crf_app.domain.roles import Action, allowed
from crf_app.gui.widgets import ErrorLabel
from crf_app.services import queries as qsvc
from crf_app.services.context import UserContext

_Index = QModelIndex | QPersistentModelIndex
STATE_COLOURS = {"open": "#b42318", "answered": "#b54708", "closed": "#1f6f43"}


class QueryTableModel(QAbstractTableModel):
    HEADERS = ["#", "Subject", "Site", "Visit", "Form", "Item", "Origin", "State", "Age (days)",
               "Opened by", "Last message"]

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[qsvc.QueryRow] = []

    def set_rows(self, rows: list[qsvc.QueryRow]) -> None:
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
        q = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            item = q.item_id + (f" [row {q.row + 1}]" if q.row else "")
            return [str(q.id), q.subject, q.site, q.visit, q.form_id, item, q.origin, q.state,
                    str(q.age_days), q.opened_by, q.last_message][index.column()]
        if role == Qt.ItemDataRole.ForegroundRole and index.column() == 7:
            return QBrush(QColor(STATE_COLOURS.get(q.state, "#000000")))
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None


class QueryListDialog(QDialog):
    def __init__(self, ctx: UserContext, parent: QWidget | None = None,
                 subject_id: int | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id = subject_id
        self.ask_text = self._ask_text  # replaced in tests
        self.setWindowTitle("Queries")
        self.resize(1100, 640)
        layout = QVBoxLayout(self)
        filters = QHBoxLayout()
        self.site = QComboBox()
        self.site.addItem("All sites", "")
        for s in ctx.study.protocol.sites:
            if ctx.user.site_code in (None, s.code):
                self.site.addItem(s.code, s.code)
        self.state = QComboBox()
        for label, code in [("Not closed", "active"), ("Open", "open"), ("Answered", "answered"),
                            ("Closed", "closed"), ("All", "")]:
            self.state.addItem(label, code)
        self.origin = QComboBox()
        for label, code in [("Any origin", ""), ("Automatic (edit check)", "auto"),
                            ("Manual (monitor)", "manual")]:
            self.origin.addItem(label, code)
        self.min_age = QSpinBox()
        self.min_age.setRange(0, 3650)
        self.min_age.setSuffix(" days or older")
        self.subject = QLineEdit()
        self.subject.setPlaceholderText("Subject…")
        for label, w in [("Site", self.site), ("State", self.state), ("Origin", self.origin),
                         ("Age", self.min_age), ("", self.subject)]:
            if label:
                filters.addWidget(QLabel(label))
            filters.addWidget(w)
        layout.addLayout(filters)
        self.model = QueryTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("queryTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        # fixed widths: sizing to contents would read every row of a 20,000-query list
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        for col, width in enumerate([50, 80, 45, 110, 100, 90, 65, 80, 75, 120]):
            self.table.setColumnWidth(col, width)
        self.thread = QTextBrowser()
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.thread)
        split.setSizes([420, 180])
        layout.addWidget(split, 1)
        self.error = ErrorLabel()
        layout.addWidget(self.error)
        buttons = QHBoxLayout()
        self.answer_button = QPushButton("&Answer…")
        self.close_button = QPushButton("&Close query…")
        self.reopen_button = QPushButton("&Re-open…")
        self.count = QLabel()
        buttons.addWidget(self.count)
        buttons.addStretch(1)
        for b in (self.answer_button, self.close_button, self.reopen_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.answer_button.clicked.connect(lambda: self._act("answer"))
        self.close_button.clicked.connect(lambda: self._act("close"))
        self.reopen_button.clicked.connect(lambda: self._act("reopen"))
        for w in (self.site, self.state, self.origin):
            w.currentIndexChanged.connect(self.refresh)
        self.min_age.valueChanged.connect(self.refresh)
        self.subject.textChanged.connect(self.refresh)
        self.table.selectionModel().selectionChanged.connect(self._show_thread)
        self.refresh()

    def refresh(self) -> None:
        state = self.state.currentData()
        rows = qsvc.list_queries(self.ctx, site=self.site.currentData() or None,
                                 subject_id=self.subject_id,
                                 state=state if state in ("open", "answered", "closed") else None,
                                 min_age_days=self.min_age.value() or None,
                                 origin=self.origin.currentData() or None)
        if state == "active":
            rows = [r for r in rows if r.state != "closed"]
        needle = self.subject.text().strip().upper()
        if needle:
            rows = [r for r in rows if needle in r.subject]
        self.model.set_rows(rows)
        self.count.setText(f"{len(rows)} queries")
        self._show_thread()

    def selected(self) -> qsvc.QueryRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.rows[rows[0].row()] if rows else None

    def _show_thread(self, *_a) -> None:
        q = self.selected()
        role = self.ctx.user.role
        self.answer_button.setEnabled(bool(q) and q.state == "open"
                                      and allowed(role, Action.ANSWER_QUERY))
        self.close_button.setEnabled(bool(q) and q.state != "closed"
                                     and allowed(role, Action.CLOSE_QUERY))
        self.reopen_button.setEnabled(bool(q) and q.state != "open"
                                      and allowed(role, Action.CLOSE_QUERY))
        if q is None:
            self.thread.clear()
            return
        from html import escape

        parts = [f"<b>Query {q.id}</b> — {escape(q.subject)} · {escape(q.visit)} · "
                 f"{escape(q.form_id)} · {escape(q.item_id)}"]
        for m in qsvc.query_thread(self.ctx, q.id):
            parts.append(f"<p><b>{escape(m.by)}</b> ({m.kind}, "
                         f"{m.at.astimezone().strftime('%Y-%m-%d %H:%M')}): {escape(m.text)}</p>")
        self.thread.setHtml("".join(parts))

    def _ask_text(self, title: str) -> str | None:
        text, ok = QInputDialog.getMultiLineText(self, title, "Message:")
        return text if ok else None

    def _act(self, kind: str) -> None:
        q = self.selected()
        if q is None:
            return
        text = self.ask_text({"answer": "Answer query", "close": "Close query",
                              "reopen": "Re-open query"}[kind])
        if text is None:
            return
        fn = {"answer": qsvc.answer_query, "close": qsvc.close_query,
              "reopen": qsvc.reopen_query}[kind]
        try:
            fn(self.ctx, q.id, text)
        except CrfError as exc:
            self.error.show_error(str(exc))
            return
        self.error.show_error("")
        self.refresh()
