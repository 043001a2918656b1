"""The document template every CRF PDF is built on: one frame per page, a running header and
footer with "Page X of Y", and an outline (bookmarks) built from markers in the story.

"Page X of Y" needs the page count before the first page is finished, and the header names
the form each page shows. So the canvas keeps every finished page, and when the story is
complete it replays them, calling the document's page callback (`decorate`) with the page
number, the page total and the context named by the last `Marker` drawn so far; the outline
entries registered on a page are attached to it at the same time (a bookmark made while a page
is still held back would point at the wrong page). One pass, no second build.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial

from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import BaseDocTemplate, Flowable, Frame, PageTemplate

from crf_app.exports.pdf.fonts import register_fonts
from crf_app.exports.pdf.styles import (
    INK,
    MARGIN_BOTTOM,
    MARGIN_TOP,
    MARGIN_X,
    MONO,
    MUTED,
    RULE,
    SANS,
    SANS_BOLD,
    styles,
)


@dataclass(frozen=True)
class PageInfo:
    """What the page callback knows about one page."""

    number: int
    total: int
    context: str  # what the page shows, e.g. "D7 Day 7 · Vital signs (v1)"


@dataclass
class _PageMarks:
    context: str | None = None  # the first context named on the page
    last_context: str | None = None
    bookmarks: list[tuple[str, str, int]] = field(default_factory=list)  # key, title, level


class DeferredCanvas(Canvas):
    """A canvas that holds pages back until the end, then decorates and emits them."""

    def __init__(self, *args, decorate: Callable[[Canvas, PageInfo], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._decorate = decorate
        self._held: list[tuple[dict, _PageMarks]] = []
        self._marks = _PageMarks()
        self._keys = 0

    def mark(self, context: str | None, bookmark: str | None, level: int) -> None:
        """Called by a Marker as it is drawn on the current page."""
        if context is not None:
            if self._marks.context is None:
                self._marks.context = context
            self._marks.last_context = context
        if bookmark is not None:
            self._keys += 1
            self._marks.bookmarks.append((f"bm{self._keys}", bookmark, level))

    def showPage(self) -> None:
        self._held.append((dict(self.__dict__), self._marks))
        self._marks = _PageMarks()
        self._startPage()

    def save(self) -> None:
        total = len(self._held)
        context = ""
        has_outline = False
        for number, (state, marks) in enumerate(self._held, start=1):
            self.__dict__.update(state)
            self._decorate(self, PageInfo(number, total, marks.context or context))
            context = marks.last_context or context
            for key, title, level in marks.bookmarks:
                self.bookmarkPage(key, fit="XYZ", top=self._pagesize[1])
                self.addOutlineEntry(title, key, level=level, closed=False)
                has_outline = True
            Canvas.showPage(self)
        if has_outline:
            self.showOutline()
        Canvas.save(self)


class Marker(Flowable):
    """Zero-size: names what follows for the running header and adds an outline entry."""

    def __init__(self, context: str | None = None, bookmark: str | None = None,
                 level: int = 0):
        super().__init__()
        self.context = context
        self.bookmark = bookmark
        self.level = level
        self.keepWithNext = True  # stays on the page of what it names
        self.width = self.height = 0

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        return 0, 0

    def draw(self) -> None:
        mark = getattr(self.canv, "mark", None)
        if mark is not None:
            mark(self.context, self.bookmark, self.level)


class CrfDocument(BaseDocTemplate):
    """One frame per page inside the margins; `decorate(canvas, PageInfo)` draws the running
    header and footer of every page once the page total is known."""

    def __init__(self, buffer: io.BytesIO, pagesize: tuple[float, float], *, title: str,
                 author: str, subject: str, decorate: Callable[[Canvas, PageInfo], None]):
        register_fonts()
        super().__init__(buffer, pagesize=pagesize, leftMargin=MARGIN_X, rightMargin=MARGIN_X,
                         topMargin=MARGIN_TOP, bottomMargin=MARGIN_BOTTOM, title=title,
                         author=author, subject=subject, creator="crf-app", invariant=1,
                         initialFontName=SANS, initialFontSize=9)
        frame = Frame(self.leftMargin, self.bottomMargin, self.width, self.height, id="body",
                      leftPadding=0, rightPadding=0, topPadding=0, bottomPadding=0)
        self.addPageTemplates([PageTemplate(id="page", frames=[frame], pagesize=pagesize)])
        self._decorate = decorate

    def build_story(self, story: Sequence[Flowable]) -> None:
        super().build(list(story), canvasmaker=partial(DeferredCanvas, decorate=self._decorate))


def render(pagesize: tuple[float, float], story: Sequence[Flowable], *, title: str, author: str,
           subject: str, decorate: Callable[[Canvas, PageInfo], None]) -> bytes:
    """Build `story` into PDF bytes."""
    buffer = io.BytesIO()
    doc = CrfDocument(buffer, pagesize, title=title, author=author, subject=subject,
                      decorate=decorate)
    doc.build_story(story)
    return buffer.getvalue()


# --- drawing the running header and footer ---------------------------------------------------
@lru_cache(maxsize=1024)  # every page's header and footer fit the same texts again
def fit_text(text: str, font: str, size: float, width: float) -> str:
    """`text` cut with an ellipsis so that it fits `width` points; a final parenthesis such as
    a form's version "(v1)" is kept."""
    if stringWidth(text, font, size) <= width:
        return text
    head, suffix = text, ""
    if text.endswith(")") and " (" in text:
        cut = text.rindex(" (")
        head, suffix = text[:cut], text[cut:]
    while head and stringWidth(head + "…" + suffix, font, size) > width:
        head = head[:-1]
    if head:
        return head.rstrip() + "…" + suffix
    while text and stringWidth(text + "…", font, size) > width:
        text = text[:-1]
    return text + "…"


@dataclass(frozen=True)
class Running:
    """The fixed texts of a document's header and footer (plain text, no markup)."""

    header_left: str
    header_left_sub: str
    header_right_sub: str
    footer_right: str
    footer_second: str = ""


def draw_running(canvas: Canvas, info: PageInfo, running: Running) -> None:
    """Header: who/what on the left, the page's context on the right, a rule below.
    Footer: a rule, "Page X of Y" on the left, generation stamp right, then a second line."""
    styles()  # fonts registered
    width, height = canvas._pagesize
    left, right = MARGIN_X, width - MARGIN_X
    usable = right - left
    canvas.saveState()
    canvas.setStrokeColor(RULE)
    canvas.setLineWidth(0.6)
    # header: who/what first (never cut), then what the page shows in the space left
    canvas.setFillColor(INK)
    y1, y2 = height - 12 * mm, height - 16.2 * mm
    left_text = fit_text(running.header_left, SANS_BOLD, 9, usable * 0.6)
    left_w = stringWidth(left_text, SANS_BOLD, 9)
    canvas.setFont(SANS_BOLD, 9)
    canvas.drawString(left, y1, left_text)
    canvas.drawRightString(right, y1, fit_text(info.context, SANS_BOLD, 9,
                                               usable - left_w - 6 * mm))
    canvas.setFont(SANS, 7.5)
    canvas.setFillColor(MUTED)
    sub_right = fit_text(running.header_right_sub, SANS, 7.5, usable * 0.4)
    canvas.drawRightString(right, y2, sub_right)
    canvas.drawString(left, y2, fit_text(running.header_left_sub, SANS, 7.5,
                                         usable - stringWidth(sub_right, SANS, 7.5) - 6 * mm))
    canvas.line(left, height - 18.5 * mm, right, height - 18.5 * mm)
    # footer
    canvas.line(left, 15 * mm, right, 15 * mm)
    canvas.setFillColor(INK)
    canvas.setFont(SANS_BOLD, 8)
    page_text = f"Page {info.number} of {info.total}"
    canvas.drawString(left, 11 * mm, page_text)
    canvas.setFont(SANS, 7)
    canvas.setFillColor(MUTED)
    canvas.drawRightString(right, 11 * mm, fit_text(
        running.footer_right, SANS, 7, usable - stringWidth(page_text, SANS_BOLD, 8) - 8 * mm))
    if running.footer_second:
        canvas.setFont(MONO, 6.5)
        canvas.drawString(left, 7.5 * mm, fit_text(running.footer_second, MONO, 6.5, usable))
    canvas.restoreState()
