"""The study dashboard as charts: enrolment by site over time, the subject × visit completion
matrix, open queries by age, SDV progress by site. Painted with QPainter (no extra module)."""

from __future__ import annotations

import itertools

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import QDialog, QGridLayout, QGroupBox, QVBoxLayout, QWidget

from crf_app.services.context import UserContext
from crf_app.services.dashboard import Dashboard, dashboard

SITE_COLOURS = ["#1f4e79", "#2e8b57", "#b54708", "#7a3fb0", "#b42318", "#0e7490"]
STATUS_COLOURS = {"done": "#2e8b57", "due": "#f2b705", "overdue": "#b42318",
                  "missed": "#8894a7", "planned": "#dfe5ee", "not scheduled": "#f3f5f8",
                  "": "#ffffff"}


class _Chart(QWidget):
    def __init__(self, data: Dashboard, parent: QWidget | None = None):
        super().__init__(parent)
        self.data = data
        self.setMinimumSize(420, 240)

    def _axes(self, p: QPainter) -> QRectF:
        r = QRectF(self.rect()).adjusted(44, 14, -14, -36)
        p.setPen(QPen(QColor("#4a5568")))
        p.drawLine(r.bottomLeft(), r.bottomRight())
        p.drawLine(r.bottomLeft(), r.topLeft())
        return r


class EnrolmentChart(_Chart):
    """Cumulative subjects enrolled per site, one line per site, by week."""

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = self._axes(p)
        weeks = self.data.weeks
        top = max((max(v) for v in self.data.enrolment.values() if v), default=1) or 1
        p.setFont(QFont("DejaVu Sans", 8))
        for i in range(0, top + 1, max(1, top // 4)):
            y = r.bottom() - r.height() * i / top
            p.drawText(QRectF(0, y - 7, 40, 14), Qt.AlignmentFlag.AlignRight, str(i))
        n = max(len(weeks) - 1, 1)
        for k, (site, values) in enumerate(self.data.enrolment.items()):
            colour = QColor(SITE_COLOURS[k % len(SITE_COLOURS)])
            p.setPen(QPen(colour, 2))
            pts = [(r.left() + r.width() * i / n, r.bottom() - r.height() * v / top)
                   for i, v in enumerate(values)]
            for (x1, y1), (x2, y2) in itertools.pairwise(pts):
                p.drawLine(int(x1), int(y1), int(x2), int(y2))
            for x, y in pts:
                p.drawEllipse(int(x) - 2, int(y) - 2, 4, 4)
            p.drawText(QRectF(r.left() + 8 + 60 * k, r.bottom() + 16, 60, 16),
                       Qt.AlignmentFlag.AlignLeft, f"■ {site}")
        p.setPen(QColor("#4a5568"))
        if weeks:
            p.drawText(QRectF(r.left(), r.bottom() + 2, 120, 14), Qt.AlignmentFlag.AlignLeft,
                       weeks[0].isoformat())
            p.drawText(QRectF(r.right() - 120, r.bottom() + 2, 120, 14),
                       Qt.AlignmentFlag.AlignRight, weeks[-1].isoformat())
        p.end()


class CompletionMatrix(_Chart):
    """Subjects (rows) × visits (columns), coloured done / due / overdue / missed / planned."""

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        p.setFont(QFont("DejaVu Sans", 7))
        rows = self.data.completion
        codes = self.data.visit_codes
        left, top = 70, 18
        cw = max(12, (self.width() - left - 10) / max(len(codes), 1))
        ch = max(3, min(14, (self.height() - top - 24) / max(len(rows), 1)))
        for j, code in enumerate(codes):
            p.drawText(QRectF(left + j * cw, 0, cw, top), Qt.AlignmentFlag.AlignCenter, code)
        for i, (subject, statuses) in enumerate(rows):
            y = top + i * ch
            if ch >= 9:
                p.drawText(QRectF(0, y, left - 4, ch), Qt.AlignmentFlag.AlignRight, subject)
            for j, status in enumerate(statuses):
                p.fillRect(QRectF(left + j * cw + 1, y + 0.5, cw - 2, ch - 1),
                           QColor(STATUS_COLOURS.get(status, "#ffffff")))
        y = self.height() - 16
        x = left
        for status in ("done", "due", "overdue", "missed", "planned"):
            p.fillRect(QRectF(x, y + 3, 10, 10), QColor(STATUS_COLOURS[status]))
            p.drawText(QRectF(x + 13, y, 60, 16), Qt.AlignmentFlag.AlignLeft, status)
            x += 72
        p.end()


class BarChart(_Chart):
    """Horizontal bars: label → value (or verified/complete as a percentage)."""

    def __init__(self, bars: list[tuple[str, float, str]], colour: str, parent=None):
        super().__init__(Dashboard([], {}, [], [], [], {}), parent)
        self.bars = bars
        self.colour = colour

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        p.setFont(QFont("DejaVu Sans", 8))
        top = max((v for _l, v, _t in self.bars), default=1) or 1
        h = (self.height() - 20) / max(len(self.bars), 1)
        for i, (label, value, text) in enumerate(self.bars):
            y = 10 + i * h
            p.setPen(QColor("#1a202c"))
            p.drawText(QRectF(0, y, 96, h), Qt.AlignmentFlag.AlignRight
                       | Qt.AlignmentFlag.AlignVCenter, label)
            width = (self.width() - 180) * value / top
            p.fillRect(QRectF(104, y + h * 0.2, width, h * 0.6), QColor(self.colour))
            p.drawText(QRectF(110 + width, y, 80, h), Qt.AlignmentFlag.AlignVCenter, text)
        p.end()


class DashboardDialog(QDialog):
    def __init__(self, ctx: UserContext, parent: QWidget | None = None,
                 sdv: dict[str, tuple[int, int]] | None = None):
        super().__init__(parent)
        self.setWindowTitle("Study dashboard")
        self.resize(1100, 720)
        self.data = dashboard(ctx, sdv=sdv)
        grid = QGridLayout(self)
        sdv_bars = [(site, 100.0 * v / c if c else 0.0, f"{v}/{c} forms")
                    for site, (v, c) in sorted(self.data.sdv_by_site.items())]
        parts = [("Enrolment by site (cumulative, by week)", EnrolmentChart(self.data)),
                 ("Visit completion (subjects × visits)", CompletionMatrix(self.data)),
                 ("Open queries by age", BarChart([(label, n, str(n)) for label, n in
                                                   self.data.queries_by_age], "#b54708")),
                 ("Source data verification by site", BarChart(sdv_bars, "#1f4e79"))]
        for k, (title, chart) in enumerate(parts):
            box = QGroupBox(title)
            QVBoxLayout(box).addWidget(chart)
            grid.addWidget(box, k // 2, k % 2)
