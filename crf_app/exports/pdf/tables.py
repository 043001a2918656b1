"""Data tables that never overflow a page, and column widths that do not break words."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.platypus import Table

from crf_app.exports.pdf.fonts import register_fonts

TALL_ROW = 120.0  # points (about 11 lines): a taller row is split at a page break
MIN_PIECE = 36.0  # never leave less than this of a split row on either page
CELL_PADDING = 6.0  # left + right padding of table_style()
MAX_WORD_SHARE = 0.3  # a longer word than this share of the width is broken, not made room for


class DataTable(Table):
    """A table that splits between rows, repeating its header rows on the next page.

    A row taller than TALL_ROW that does not fit the space left is split across the page
    break instead of being moved whole (which would leave a mostly empty page, or a repeated
    header in the middle of one); a row that still does not fit a whole page is split too.
    """

    _laid_out: tuple[float, float] | None = None  # the size the layout below was made for

    def __init__(self, data, colWidths=None, **kwargs):
        kwargs.setdefault("splitInRow", int(MIN_PIECE))
        kwargs.setdefault("hAlign", "LEFT")
        super().__init__(data, colWidths=colWidths, **kwargs)

    def _calc(self, availWidth, availHeight):
        # A frame wraps the table, then splits it in the same space; split() lays it out again
        # and so does Table.split: the same space gives the same layout, so it is made once.
        if self._laid_out == (availWidth, availHeight):
            return
        super()._calc(availWidth, availHeight)
        self._laid_out = (availWidth, availHeight)

    def split(self, availWidth, availHeight):
        self._calc(availWidth, availHeight)
        heights = self._rowHeights
        used, n = 0.0, 0
        while n < len(heights) and used + heights[n] <= availHeight:
            used += heights[n]
            n += 1
        header = self.repeatRows if isinstance(self.repeatRows, int) else 0
        if (header <= n < len(heights) and heights[n] > TALL_ROW
                and availHeight - used >= MIN_PIECE):
            pieces = self._splitRows(availHeight, doInRowSplit=True)
            if pieces:
                return pieces
        return super().split(availWidth, availHeight)


@lru_cache(maxsize=8192)  # a log repeats its dates, user names and actions row after row
def _longest_word(text: str, font: str, size: float) -> float:
    words = text.split()
    return max((stringWidth(w, font, size) for w in words), default=0.0)


def column_widths(header: Sequence[str], rows: Sequence[Sequence[str]], total: float, *,
                  font: str, bold: str, size: float, fixed: Sequence[float | None] = ()
                  ) -> list[float]:
    """Widths summing to `total`: each column at least as wide as its longest word (so words
    are not broken when the page allows it), the rest shared by how much text it holds.
    `fixed[i]` (when given and not None) fixes a column's width."""
    register_fonts()
    count = len(header)
    fixed = list(fixed) + [None] * (count - len(fixed))
    minimum, weight = [], []
    for c in range(count):
        texts = [str(r[c]) for r in rows]
        need = max([_longest_word(header[c], bold, size)]
                   + [_longest_word(t, font, size) for t in texts]) + CELL_PADDING
        minimum.append(min(need, total * MAX_WORD_SHARE))
        weight.append(max([len(header[c]) * 0.5] + [len(t) for t in texts] + [4.0]))
    free = total - sum(f for f in fixed if f is not None)
    loose = [c for c in range(count) if fixed[c] is None]
    need = sum(minimum[c] for c in loose)
    widths = [f or 0.0 for f in fixed]
    if need >= free:  # not enough room: shrink in proportion (long words will break)
        for c in loose:
            widths[c] = free * minimum[c] / need
        return widths
    spare = free - need
    total_weight = sum(min(weight[c], 60.0) for c in loose)
    for c in loose:
        widths[c] = minimum[c] + spare * min(weight[c], 60.0) / total_weight
    return widths
