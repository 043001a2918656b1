"""The course timeline: one column per day — instillations and dose, missed doses, the
courses — and below it every adverse event as a bar from start to end, coloured by CTCAE grade,
with a marker on serious ones.

It paints only the plain `services.reports.Timeline`, with a QPainter that can target the widget
or an image (`render_png`), so reports can reuse the same picture.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetricsF,
    QImage,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPen,
    QResizeEvent,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from crf_app.gui.log_table_models import GRADE_COLOURS
from crf_app.services.reports import Timeline, TimelineAe

LEFT, RIGHT, TOP = 118.0, 14.0, 44.0
DOSE_H, LANE_H, LANE_GAP, AXIS_H, LEGEND_H = 86.0, 18.0, 5.0, 34.0, 24.0
GREEN, AMBER, RED, GREY = "#2f855a", "#d69e2e", "#b42318", "#8894a7"
COURSE_FILL, TEXT, GRID = "#e8f0fa", "#1a202c", "#e3e7ee"


def lanes(aes: list[TimelineAe], last: date) -> list[list[TimelineAe]]:
    """Adverse events packed into as few rows as possible without overlapping."""
    out: list[list[TimelineAe]] = []
    ends: list[date] = []
    for ae in sorted(aes, key=lambda a: (a.start, -a.grade)):
        end = ae.end or last
        for i, lane_end in enumerate(ends):
            if lane_end < ae.start:
                out[i].append(ae)
                ends[i] = end
                break
        else:
            out.append([ae])
            ends.append(end)
    return out


class CourseTimeline(QWidget):
    """Paints a subject's `Timeline`; `render_png(path)` writes the same picture to a file."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.timeline: Timeline | None = None
        self.setObjectName("courseTimeline")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumHeight(self.needed_height())
        self.setAccessibleName("Course timeline")

    def set_timeline(self, timeline: Timeline | None) -> None:
        self.timeline = timeline
        self.setMinimumHeight(self.needed_height())
        self.setToolTip(self._summary())
        self.updateGeometry()
        self.update()

    def needed_height(self, width: float | None = None) -> int:
        """The height that shows every AE row and the legend at `width` (default: current)."""
        n = len(lanes(self.timeline.aes, self.timeline.last)) if self.timeline else 0
        legend = len(self._legend_rows(width or max(self.width(), 300)))
        return int(TOP + DOSE_H + 22 + max(n, 1) * (LANE_H + LANE_GAP) + AXIS_H
                   + legend * (LEGEND_H - 6) + 14)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self.minimumHeight() != self.needed_height():
            self.setMinimumHeight(self.needed_height())

    def sizeHint(self) -> QSize:
        return QSize(900, self.needed_height())

    def _summary(self) -> str:
        t = self.timeline
        if t is None:
            return ""
        given = sum(d.instillations for d in t.days)
        missed = sum(d.missed for d in t.days)
        return (f"{t.first.isoformat()} to {t.last.isoformat()}: {given} instillations, "
                f"{missed} missed doses, {len(t.aes)} adverse events")

    # --- output ---------------------------------------------------------------------------
    def paintEvent(self, _event: QPaintEvent) -> None:
        p = QPainter(self)
        try:
            self.paint(p, QRectF(self.rect()))
        finally:
            p.end()

    def render_image(self, width: int | None = None, height: int | None = None) -> QImage:
        """The picture as an image (white background), by default at the widget's size."""
        w = width or max(self.width(), 900)
        h = height or self.needed_height(w)
        image = QImage(w, h, QImage.Format.Format_ARGB32)
        image.fill(QColor("#ffffff"))
        p = QPainter(image)
        try:
            self.paint(p, QRectF(0, 0, w, h))
        finally:
            p.end()
        return image

    def render_png(self, path: str | Path, width: int | None = None,
                   height: int | None = None) -> Path:
        """Write the picture to a PNG file; returns the path."""
        path = Path(path)
        if not self.render_image(width, height).save(str(path), "PNG"):
            raise OSError(f"cannot write {path}")
        return path

    # --- painting -------------------------------------------------------------------------
    def paint(self, p: QPainter, area: QRectF) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(area, QColor("#ffffff"))
        font = self._small_font()
        p.setFont(font)
        t = self.timeline
        if t is None or (not t.days and not t.aes and t.baseline is None):
            p.setPen(QColor(GREY))
            p.drawText(area, Qt.AlignmentFlag.AlignCenter,
                       "No doses or adverse events recorded yet")
            return
        n_days = (t.last - t.first).days + 1
        plot = QRectF(area.left() + LEFT, area.top() + TOP,
                      max(area.width() - LEFT - RIGHT, 10.0), 0)
        col = plot.width() / n_days
        x_of = lambda d: plot.left() + (d - t.first).days * col  # noqa: E731
        ae_lanes = lanes(t.aes, t.last)
        dose_top = plot.top()
        ae_top = dose_top + DOSE_H + 22
        ae_bottom = ae_top + max(len(ae_lanes), 1) * (LANE_H + LANE_GAP)
        bold = QFont(font)
        bold.setBold(True)

        p.setFont(bold)
        p.setPen(QColor(TEXT))
        p.drawText(QRectF(area.left() + 8, area.top() + 4, area.width() - 16, 20),
                   Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   f"Course timeline — {t.title}")
        p.drawText(QRectF(area.left() + 8, dose_top + 2, LEFT - 14, DOSE_H),
                   Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop,
                   "Instillations\nper day")
        p.drawText(QRectF(area.left() + 8, ae_top, LEFT - 14, ae_bottom - ae_top),
                   Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                   "Adverse\nevents")
        p.setFont(font)

        # courses (behind everything), day grid, baseline and today
        for i, (start, end) in enumerate(t.courses, 1):
            band = QRectF(x_of(start), dose_top, (end - start).days * col + col, DOSE_H)
            p.fillRect(band, QColor(COURSE_FILL))
            p.setPen(QColor("#1f4e79"))
            p.drawText(band.adjusted(3, 1, 0, 0), Qt.AlignmentFlag.AlignLeft
                       | Qt.AlignmentFlag.AlignTop, f"Course {i}" if band.width() > 50 else "")
        p.setPen(QPen(QColor(GRID), 1))
        step = self._label_step(col)
        for k in range(n_days + 1):
            if k % step == 0 or col >= 10:
                x = plot.left() + k * col
                p.drawLine(QPointF(x, dose_top), QPointF(x, ae_bottom))
        for when, label, colour in ((t.baseline, "Day 1", "#1f4e79"),
                                    (t.today, "Today", RED)):
            if when is not None and t.first <= when <= t.last:
                x = x_of(when) + (col / 2 if label == "Today" else 0)
                p.setPen(QPen(QColor(colour), 1.2, Qt.PenStyle.DashLine))
                p.drawLine(QPointF(x, dose_top - 4), QPointF(x, ae_bottom))
                width = p.fontMetrics().horizontalAdvance(label)
                x_text = x + 2 if x + 2 + width <= area.right() - 2 else x - 2 - width
                p.drawText(QPointF(x_text, dose_top - 5), label)

        self._paint_doses(p, t, x_of, col, dose_top, area.left())
        self._paint_aes(p, t, ae_lanes, x_of, col, ae_top, bold)
        self._paint_axis(p, t, x_of, col, step, ae_bottom)
        self._paint_legend(p, area, ae_bottom + AXIS_H)

    @staticmethod
    def _label_step(col: float) -> int:
        for step in (1, 2, 7, 14, 28, 56, 91, 182, 364):
            if step * col >= 46:
                return step
        return 728

    def _paint_doses(self, p: QPainter, t: Timeline, x_of, col: float, top: float,
                     left: float) -> None:
        top_n = max(t.max_per_day, max((d.instillations for d in t.days), default=0), 1)
        unit = (DOSE_H - 26) / top_n
        base = top + DOSE_H - 4
        p.setPen(QPen(QColor(GREEN), 1, Qt.PenStyle.DotLine))
        y_plan = base - t.planned_per_day * unit
        p.drawLine(QPointF(x_of(t.first), y_plan), QPointF(x_of(t.last) + col, y_plan))
        p.drawText(QRectF(left + 8, y_plan - 7, LEFT - 14, 14),
                   Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                   f"plan {t.planned_per_day} ┄")
        bar_w = max(min(col * 0.7, 26.0), 2.0)
        for d in t.days:
            cx = x_of(d.day) + col / 2
            if d.instillations:
                colour = (RED if d.instillations > t.max_per_day
                          else GREEN if d.instillations >= t.planned_per_day else AMBER)
                h = d.instillations * unit
                p.fillRect(QRectF(cx - bar_w / 2, base - h, bar_w, h), QColor(colour))
                if col >= 14:
                    p.setPen(QColor(TEXT))
                    p.drawText(QRectF(cx - col / 2, base - h - 14, col, 13),
                               Qt.AlignmentFlag.AlignCenter, str(d.instillations))
            if d.missed:
                s = min(col * 0.35, 6.0)
                y = base - s - 2
                p.setPen(QPen(QColor(RED), 2))
                p.drawLine(QPointF(cx - s, y - s), QPointF(cx + s, y + s))
                p.drawLine(QPointF(cx - s, y + s), QPointF(cx + s, y - s))
            if d.flagged:  # beside the count, above the bar
                h = d.instillations * unit
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(QColor(RED))
                p.drawEllipse(QPointF(cx + max(bar_w / 2, 6), base - h - 8), 3, 3)
                p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(QPen(QColor("#4a5568"), 1))
        p.drawLine(QPointF(x_of(t.first), base), QPointF(x_of(t.last) + col, base))

    def _paint_aes(self, p: QPainter, t: Timeline, ae_lanes, x_of, col: float, top: float,
                   bold: QFont) -> None:
        if not ae_lanes:
            p.setPen(QColor(GREY))
            p.drawText(QRectF(x_of(t.first) + 4, top, 300, LANE_H),
                       Qt.AlignmentFlag.AlignVCenter, "No adverse events")
            return
        right_edge = x_of(t.last) + col + RIGHT - 2
        for i, lane in enumerate(ae_lanes):
            y = top + i * (LANE_H + LANE_GAP)
            for k, ae in enumerate(lane):
                room_until = x_of(lane[k + 1].start) - 4 if k + 1 < len(lane) else right_edge
                end = ae.end or t.last
                rect = QRectF(x_of(ae.start) + 1, y, (end - ae.start).days * col + col - 2,
                              LANE_H)
                colour = QColor(GRADE_COLOURS.get(ae.grade, GREY))
                path = QPainterPath()
                path.addRoundedRect(rect, 3, 3)
                p.fillPath(path, colour)
                if ae.end is None:  # ongoing: an arrow head past the last day
                    head = QPainterPath()
                    head.moveTo(rect.right(), y)
                    head.lineTo(rect.right() + 7, y + LANE_H / 2)
                    head.lineTo(rect.right(), y + LANE_H)
                    p.fillPath(head, colour)
                label = f"{ae.label} · G{ae.grade}" + (" · ongoing" if ae.end is None else "")
                x_text = rect.left() + (16 if ae.serious else 4)
                width = p.fontMetrics().horizontalAdvance(label)
                inside = x_text + width <= rect.right() - 2
                if not inside and rect.right() + 10 + width <= room_until:
                    x_text, right = rect.right() + (10 if ae.end is None else 4), room_until
                    p.setPen(QColor(TEXT))  # a short bar: the label follows it
                else:
                    right = rect.right() - 2
                    p.setPen(QColor("#ffffff" if ae.grade >= 3 else TEXT))
                p.drawText(QRectF(x_text, y, max(right - x_text, 0), LANE_H),
                           Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                           p.fontMetrics().elidedText(label, Qt.TextElideMode.ElideRight,
                                                      int(max(right - x_text, 0))))
                if ae.serious:
                    self._sae_marker(p, QPointF(rect.left() + 8, y + LANE_H / 2), ae.reported)

    @staticmethod
    def _sae_marker(p: QPainter, c: QPointF, reported: bool) -> None:
        diamond = QPainterPath()
        r = 6.5
        diamond.moveTo(c.x(), c.y() - r)
        diamond.lineTo(c.x() + r, c.y())
        diamond.lineTo(c.x(), c.y() + r)
        diamond.lineTo(c.x() - r, c.y())
        diamond.closeSubpath()
        p.fillPath(diamond, QColor("#ffffff") if reported else QColor(RED))
        p.setPen(QPen(QColor(RED), 1.6))
        p.drawPath(diamond)

    def _paint_axis(self, p: QPainter, t: Timeline, x_of, col: float, step: int,
                    y: float) -> None:
        p.setPen(QColor("#4a5568"))
        day = t.first
        while day <= t.last:
            x = x_of(day)
            label = day.strftime("%d %b")
            if t.baseline is not None:
                n = (day - t.baseline).days
                label = f"D{n + 1 if n >= 0 else n}\n" + label
            p.drawText(QRectF(x - 30 + col / 2, y + 2, 60, AXIS_H - 4),
                       Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, label)
            day += timedelta(days=step)

    # legend: (kind, colour, label); kinds: box, cross, diamond, dot
    LEGEND = [("box", GREEN, "full day"), ("box", AMBER, "below plan"),
              ("box", RED, "above maximum"),
              *(("box", GRADE_COLOURS[g], f"AE grade {g}" if g == 1 else f"G{g}")
                for g in range(1, 6)),
              ("cross", RED, "missed dose"), ("diamond", RED, "SAE (hollow: reported)"),
              ("dot", RED, "query raised")]

    def _legend_rows(self, width: float) -> list[list[tuple[str, str, str, float]]]:
        """Legend items with their widths, wrapped into rows that fit `width`."""
        metrics = QFontMetricsF(self._small_font())
        rows: list[list[tuple[str, str, str, float]]] = [[]]
        used = 0.0
        room = max(width - LEFT - RIGHT, 200.0)
        for kind, colour, label in self.LEGEND:
            w = 16 + metrics.horizontalAdvance(label) + 12
            if rows[-1] and used + w > room:
                rows.append([])
                used = 0.0
            rows[-1].append((kind, colour, label, w))
            used += w
        return rows

    def _small_font(self) -> QFont:
        font = QFont(self.font())
        font.setPointSizeF(8.5)
        return font

    def _paint_legend(self, p: QPainter, area: QRectF, y: float) -> None:
        for row in self._legend_rows(area.width()):
            x = area.left() + LEFT
            for kind, colour, label, w in row:
                c = QPointF(x + 5, y + 11)
                if kind == "box":
                    p.fillRect(QRectF(x, y + 6, 10, 10), QColor(colour))
                elif kind == "cross":
                    p.setPen(QPen(QColor(colour), 2))
                    p.drawLine(QPointF(x + 1, y + 7), QPointF(x + 9, y + 15))
                    p.drawLine(QPointF(x + 1, y + 15), QPointF(x + 9, y + 7))
                elif kind == "diamond":
                    self._sae_marker(p, c, False)
                else:
                    p.setPen(Qt.PenStyle.NoPen)
                    p.setBrush(QColor(colour))
                    p.drawEllipse(c, 3, 3)
                    p.setBrush(Qt.BrushStyle.NoBrush)
                p.setPen(QColor(TEXT))
                p.drawText(QPointF(x + 16, y + 15), label)
                x += w
            y += LEGEND_H - 6
