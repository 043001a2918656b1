"""Write-in fields of the blank CRF book: comb boxes (one character per box), tick boxes and
ruled lines, sized from the item's type, limits and precision."""

from __future__ import annotations

import re
from decimal import Decimal

from reportlab.lib.units import mm
from reportlab.platypus import Flowable, Paragraph

from crf_app.domain.forms import FormDef, ItemDef
from crf_app.exports.pdf.fonts import SANS
from crf_app.exports.pdf.styles import BOX, MUTED, esc, markup, styles

BOX_W, BOX_H, SEP_W = 5.2 * mm, 6.4 * mm, 2.8 * mm
TICK = "☐"


class Boxes(Flowable):
    """Groups of comb boxes with separators ('-', ':', '.') and a unit after them; each group
    may carry a small hint under it ('yyyy', 'mm'). Shrinks the boxes to fit a narrow cell."""

    def __init__(self, groups: list[tuple[int, str]], seps: list[str], unit: str = ""):
        super().__init__()
        self.groups, self.seps, self.unit = groups, seps, unit
        self.scale = 1.0

    def _natural(self) -> float:
        boxes = sum(n for n, _ in self.groups) * BOX_W
        unit = (2 * mm + self.canv_width(self.unit)) if self.unit else 0
        return boxes + len(self.seps) * SEP_W + unit

    @staticmethod
    def canv_width(text: str) -> float:
        from reportlab.pdfbase.pdfmetrics import stringWidth

        return stringWidth(text, SANS, 8.5)

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        natural = self._natural()
        self.scale = min(1.0, max(0.6, avail_width / natural)) if natural else 1.0
        hints = any(h for _, h in self.groups)
        self.width = min(natural * self.scale, avail_width)
        self.height = BOX_H * self.scale + (3 * mm if hints else 0)
        return self.width, self.height

    def draw(self) -> None:
        c = self.canv
        w, h, sep = BOX_W * self.scale, BOX_H * self.scale, SEP_W * self.scale
        base = self.height - h
        x = 0.0
        c.saveState()
        c.setStrokeColor(BOX)
        c.setLineWidth(0.6)
        for index, (count, hint) in enumerate(self.groups):
            start = x
            for _ in range(count):
                c.rect(x, base, w, h, stroke=1, fill=0)
                x += w
            if hint:
                c.setFont(SANS, 5.5)
                c.setFillColor(MUTED)
                c.drawCentredString((start + x) / 2, base - 2.4 * mm, hint)
            if index < len(self.seps):
                c.setFont(SANS, 10)
                c.setFillColor("#1b1f24")
                c.drawCentredString(x + sep / 2, base + h * 0.25, self.seps[index])
                x += sep
        if self.unit:
            c.setFont(SANS, 8.5)
            c.setFillColor("#1b1f24")
            c.drawString(x + 2 * mm, base + h * 0.3, self.unit)
        c.restoreState()


class Lines(Flowable):
    """Ruled lines to write free text on."""

    def __init__(self, count: int, spacing: float = 6.5 * mm):
        super().__init__()
        self.count, self.spacing = count, spacing

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        self.width, self.height = avail_width, self.count * self.spacing
        return self.width, self.height

    def draw(self) -> None:
        c = self.canv
        c.saveState()
        c.setStrokeColor(BOX)
        c.setLineWidth(0.5)
        for i in range(self.count):
            y = self.height - (i + 1) * self.spacing + 1
            c.line(0, y, self.width, y)
        c.restoreState()


def _digits(value: Decimal | None) -> int:
    return len(str(int(abs(value)))) if value is not None else 0


def number_boxes(item: ItemDef) -> Boxes:
    hmin, hmax, smin, smax = item.bounds
    whole = max(_digits(hmin), _digits(hmax), _digits(smin), _digits(smax)) or 5
    sign = 1 if (hmin is not None and hmin < 0) else 0
    unit = item.unit or ""
    if item.type == "decimal" and item.precision:
        return Boxes([(whole + sign, ""), (item.precision, "")], ["."], unit)
    return Boxes([(whole + sign, "")], [], unit)


DATE_GROUPS = [(4, "yyyy"), (2, "mm"), (2, "dd")]


def entry_for(item: ItemDef) -> list[Flowable]:
    """The write-in field of one item."""
    st = styles()
    t = item.type
    if t in ("integer", "decimal"):
        return [number_boxes(item)]
    if t in ("date", "partial_date"):
        return [Boxes(DATE_GROUPS, ["-", "-"])]
    if t == "time":
        return [Boxes([(2, "hh"), (2, "mm")], [":"])]
    if t == "datetime":
        return [Boxes([*DATE_GROUPS, (2, "hh"), (2, "mm")], ["-", "-", "  ", ":"])]
    if t in ("choice", "multi_choice", "yes_no"):
        codes = item.codes
        short = len(codes) <= 4 and all(len(c.label) <= 16 for c in codes)
        parts = [f'<font size=11>{TICK}</font> {esc(c.label)} <font size=7 color="#5b6673">'
                 f"({esc(c.code)})</font>" for c in codes]
        joiner = "&nbsp;&nbsp;&nbsp;&nbsp;" if short else "<br/>"
        out: list[Flowable] = [markup(joiner.join(parts), st.choice)]
        if t == "multi_choice" and "tick" not in item.help.lower():
            out.append(Paragraph("Tick every box that applies.", st.cell_small))
        return out
    lines = 1 if item.text_limit <= 60 else 2 if item.text_limit <= 200 else 4
    return [Lines(lines)]


def limits_note(item: ItemDef) -> str:
    """'Range 40–300 mmHg; expected 90–180 mmHg' (plain text)."""
    from crf_app.domain.forms.types import format_limit

    hmin, hmax, smin, smax = item.bounds
    unit = f" {item.unit}" if item.unit else ""

    def span(lo: Decimal | None, hi: Decimal | None) -> str:
        if lo is not None and hi is not None:
            return f"{format_limit(item, lo)}–{format_limit(item, hi)}{unit}"
        if hi is not None:
            return f"≤ {format_limit(item, hi)}{unit}"
        return f"≥ {format_limit(item, lo)}{unit}" if lo is not None else ""

    parts = []
    if hmin is not None or hmax is not None:
        parts.append(f"Permitted {span(hmin, hmax)}")
    if smin is not None or smax is not None:
        flag = item.soft.flag if item.soft and item.soft.flag else "expected"
        parts.append(f"{flag} {span(smin, smax)}")
    if item.type == "decimal":
        parts.append(f"{item.precision} decimal{'s' if item.precision != 1 else ''}")
    if item.type == "text":
        parts.append(f"max {item.text_limit} characters")
    if item.type == "partial_date":
        parts.append("leave unknown month/day empty")
    return "; ".join(parts)


_ID = r"[A-Z][A-Z0-9_]*"
_TOKEN = re.compile(
    rf'contains\(\s*(?P<cid>{_ID})\s*,\s*"(?P<cval>[^"]*)"\s*\)'
    rf"|is_empty\(\s*(?P<eid>{_ID})\s*\)"
    rf'|\b(?P<qid>{_ID})\s*(?P<op>==|!=)\s*"(?P<qval>[^"]*)"'
    rf"|\b(?P<id>{_ID})\b"
    r'|"[^"]*"')


def readable_condition(expression: str, form: FormDef) -> str:
    """A show_if expression with item ids as their labels and codes as their labels:
    'CMONGO == "N"' -> '“Ongoing” is No'. One pass, so a label is never rewritten again."""
    known = {i.id: i for i in form.items}

    def label(item_id: str) -> str:
        item = known.get(item_id)
        return f"“{item.label}”" if item else item_id

    def code(item_id: str, value: str) -> str:
        item = known.get(item_id)
        return (item.code_label(value) if item and item.codes else None) or f'"{value}"'

    def replace(m: re.Match[str]) -> str:
        if m["cid"]:
            return f"{label(m['cid'])} includes {code(m['cid'], m['cval'])}"
        if m["eid"]:
            return f"{label(m['eid'])} is empty"
        if m["qid"]:
            verb = "is" if m["op"] == "==" else "is not"
            return f"{label(m['qid'])} {verb} {code(m['qid'], m['qval'])}"
        if m["id"]:
            return label(m["id"])
        return m[0]

    return _TOKEN.sub(replace, " ".join(expression.split()))
