"""The audit-trail viewer: who, when, old → new, reason; filterable; CSV export."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
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
from crf_app.gui.widgets import ErrorLabel
from crf_app.services.audit_trail import AuditRow, audit_history, export_audit_csv
from crf_app.services.context import UserContext

_Index = QModelIndex | QPersistentModelIndex


class AuditTableModel(QAbstractTableModel):
    HEADERS = ["When (local)", "User", "Action", "Entity", "Field", "Old", "New", "Reason"]

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[AuditRow] = []

    def set_rows(self, rows: list[AuditRow]) -> None:
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
        r = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return [r.at.astimezone().strftime("%Y-%m-%d %H:%M:%S"), r.user, r.action,
                    f"{r.entity} {r.entity_id}", r.field, r.old or "", r.new or "",
                    r.reason][index.column()]
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"Event {r.id} at {r.at.isoformat()} UTC"
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None


class AuditViewerDialog(QDialog):
    def __init__(self, ctx: UserContext, parent: QWidget | None = None, *,
                 subject_id: int | None = None, entity_prefix: str = "", title: str = ""):
        super().__init__(parent)
        self.ctx = ctx
        self.subject_id = subject_id
        self.setWindowTitle("Audit trail" + (f" — {title}" if title else ""))
        self.resize(1150, 620)
        layout = QVBoxLayout(self)
        filters = QHBoxLayout()
        self.entity = QLineEdit(entity_prefix)
        self.entity.setPlaceholderText("Subject/visit/form, e.g. S01-004/SCR/vital_signs")
        self.field = QLineEdit()
        self.field.setPlaceholderText("Item or field, e.g. SYSBP")
        self.user = QLineEdit()
        self.user.setPlaceholderText("User")
        self.text = QLineEdit()
        self.text.setPlaceholderText("Text in values or reason")
        for w in (self.entity, self.field, self.user, self.text):
            w.textChanged.connect(self.refresh)
            filters.addWidget(w)
        layout.addLayout(filters)
        self.model = AuditTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("auditTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        for col, width in enumerate([150, 90, 110, 260, 110, 110, 110]):
            self.table.setColumnWidth(col, width)
        layout.addWidget(self.table, 1)
        self.error = ErrorLabel()
        layout.addWidget(self.error)
        row = QHBoxLayout()
        self.count = QLabel()
        row.addWidget(self.count)
        row.addStretch(1)
        export = QPushButton("Export whole audit trail to CSV…")
        export.clicked.connect(self.export_csv)
        row.addWidget(export)
        layout.addLayout(row)
        self.refresh()

    def refresh(self) -> None:
        rows = audit_history(self.ctx, subject_id=self.subject_id,
                             entity_prefix=self.entity.text().strip() or None,
                             field=self.field.text().strip() or None,
                             user=self.user.text().strip() or None,
                             text=self.text.text().strip() or None, limit=5000)
        self.model.set_rows(rows)
        self.count.setText(f"{len(rows)} events (newest first"
                           + (", first 5,000)" if len(rows) == 5000 else ")"))

    def export_csv(self, path: str | None = None) -> None:
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Export audit trail",
                                                  "audit-trail.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            n = export_audit_csv(self.ctx, path)
        except CrfError as exc:
            self.error.show_error(str(exc))
            return
        self.error.show_error("")
        self.count.setText(f"{n} events exported to {path}")
