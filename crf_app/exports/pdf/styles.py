"""Every colour, font size, paragraph style and table style of the PDFs, in one place.

User text never goes into a Paragraph unescaped: `para(text, style)` escapes it (`<b>`, `&`,
`<` print literally) and keeps its line breaks; markup we write ourselves goes through
`markup(...)` with the user parts passed through `esc`.
"""

from __future__ import annotations

import copy
import re
import threading
from dataclasses import dataclass
from functools import cache
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_LEFT, TA_RIGHT
from reportlab.lib.pagesizes import A4, LETTER
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, TableStyle
from reportlab.platypus.paragraph import cleanBlockQuotedText, textTransformFrags
from reportlab.platypus.paraparser import ParaFrag

from crf_app.exports.pdf.fonts import MONO, SANS, SANS_BOLD, SANS_ITALIC, register_fonts

PAGE_SIZES = {"A4": A4, "Letter": LETTER}

MARGIN_X = 16 * mm
MARGIN_TOP = 24 * mm  # room for the running header
MARGIN_BOTTOM = 20 * mm  # room for the footer

INK = colors.HexColor("#1b1f24")
MUTED = colors.HexColor("#5b6673")
RULE = colors.HexColor("#9aa5b1")
GRID = colors.HexColor("#c5ccd4")
HEAD_BG = colors.HexColor("#e6edf5")
SECTION_BG = colors.HexColor("#f2f5f9")
ZEBRA = colors.HexColor("#f8fafc")
FLAG_HEX = "#b3261e"
FLAG = colors.HexColor(FLAG_HEX)
FLAG_BG = colors.HexColor("#fdeceb")
NA = colors.HexColor("#7b8490")
ANNOT = colors.HexColor("#1f4fbf")
ANNOT_BG = colors.HexColor("#eef3ff")
BOX = colors.HexColor("#4a5560")


def page_size(name: str) -> tuple[float, float]:
    """The ReportLab page size for 'A4' or 'Letter' (case-insensitive)."""
    for key, size in PAGE_SIZES.items():
        if key.lower() == str(name).lower():
            return size
    raise ValueError(f"page size {name!r} is not supported; use A4 or Letter")


def esc(text: object) -> str:
    """User text made safe for a Paragraph: XML-escaped, line breaks kept."""
    if text is None:
        return ""
    return escape(str(text)).replace("\r\n", "\n").replace("\n", "<br/>")


class _Shared:
    """What every paragraph of one (text, style) shares: the parser's fragments, and the
    layout made at each width (the attributes ReportLab's wrap sets, and its result)."""

    __slots__ = ("bullet", "frags", "layouts", "style", "text")

    def __init__(self, text: str, style: ParagraphStyle, frags: list, bullet: object):
        self.text, self.style, self.frags, self.bullet = text, style, frags, bullet
        self.layouts: dict[float, tuple[dict[str, object], tuple[float, float]]] = {}


_SHARED_MAX = 4096  # (text, style) pairs kept; the lot is dropped when full
_by_key: dict[tuple[str, ParagraphStyle], _Shared] = {}
_by_key_lock = threading.Lock()


_MARKUP = re.compile(r"[<>&]")
_templates: dict[ParagraphStyle, ParaFrag] = {}


def _plain_frags(text: str, style: ParagraphStyle) -> list[ParaFrag] | None:
    """The parser's fragments for a text without markup (most cells: a date, a name, a
    code), made without running the parser: its one fragment for `style` with this text,
    exactly what it builds (whitespace cleaned as Paragraph cleans it). None for markup."""
    if _MARKUP.search(text):
        return None
    cleaned = cleanBlockQuotedText(text)
    if not cleaned:
        return None
    template = _templates.get(style)
    if template is None:
        parsed = Paragraph("x", style).frags
        if len(parsed) != 1 or parsed[0].text != "x":
            return None
        if len(_templates) >= 256:
            _templates.clear()
        template = _templates[style] = parsed[0]
    frag = copy.copy(template)
    frag.text = cleaned
    frags = [frag]
    textTransformFrags(frags, style)
    return frags


class LaidOutParagraph(Paragraph):
    """A Paragraph that parses and lays out each (text, style, width) once.

    A casebook repeats the same cells hundreds of times (a user name, a date, an action, a
    column heading), and a table lays every cell out to measure its row, again when it splits
    at a page break, and again to draw it. Parsing the markup depends only on the text and
    the style; breaking the lines only on those and the width (not on the height offered).
    So the parser's fragments, and the layout made at a width, are made once and shared:
    ReportLab only reads them afterwards (drawing and splitting build new objects), and the
    PDF is byte for byte the one an ordinary Paragraph gives. Split pieces (built by ReportLab
    from fragments) and paragraphs in styles made on the fly simply do not share."""

    _laid_out: tuple[float, float, float] | None = None  # (width offered, width, height)
    _shared: _Shared | None = None

    def __init__(self, text: str, style: ParagraphStyle | None = None, *args, **kwargs):
        if args or kwargs or style is None:  # e.g. the pieces of a split: ReportLab's way
            super().__init__(text, style, *args, **kwargs)
            return
        key = (text, style)
        shared = _by_key.get(key)
        if shared is None:
            frags = _plain_frags(text, style)
            if frags is None:
                super().__init__(text, style)  # parses
            else:
                super().__init__(frags[0].text, style, frags=frags)
            shared = _Shared(self.text, self.style, list(self.frags), self.bulletText)
            with _by_key_lock:
                if len(_by_key) >= _SHARED_MAX:
                    _by_key.clear()
                _by_key[key] = shared
        else:
            super().__init__(shared.text, shared.style, bulletText=shared.bullet,
                             frags=list(shared.frags))
        self._shared = shared

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        done = self._laid_out
        if done is not None and done[0] == availWidth:
            return done[1], done[2]
        shared = self._shared
        layout = shared.layouts.get(availWidth) if shared is not None else None
        if layout is not None:
            attrs, (width, height) = layout
            self.__dict__.update(attrs)
        else:
            before = dict(self.__dict__)
            width, height = super().wrap(availWidth, availHeight)
            if shared is not None:
                attrs = {k: v for k, v in self.__dict__.items()
                         if k not in before or before[k] is not v}
                shared.layouts[availWidth] = (attrs, (width, height))
        self._laid_out = (availWidth, width, height)
        return width, height


def para(text: object, style: ParagraphStyle) -> Paragraph:
    """A Paragraph of plain (user) text, escaped."""
    return LaidOutParagraph(esc(text), style)


def markup(text: str, style: ParagraphStyle) -> Paragraph:
    """A Paragraph of markup we wrote (user parts must already be passed through `esc`)."""
    return LaidOutParagraph(text, style)


@dataclass(frozen=True)
class Styles:
    title: ParagraphStyle
    subtitle: ParagraphStyle
    h1: ParagraphStyle
    h2: ParagraphStyle
    h3: ParagraphStyle
    body: ParagraphStyle
    small: ParagraphStyle
    muted: ParagraphStyle
    cell: ParagraphStyle
    cell_bold: ParagraphStyle
    cell_head: ParagraphStyle
    cell_small: ParagraphStyle
    cell_right: ParagraphStyle
    cell_center: ParagraphStyle
    choice: ParagraphStyle
    compact: ParagraphStyle
    compact_head: ParagraphStyle
    compact_na: ParagraphStyle
    compact_flag: ParagraphStyle
    flag: ParagraphStyle
    na: ParagraphStyle
    annot: ParagraphStyle
    mono: ParagraphStyle
    cover_label: ParagraphStyle
    cover_value: ParagraphStyle


@cache
def styles() -> Styles:
    """The shared paragraph styles (fonts registered on first use)."""
    register_fonts()
    base = ParagraphStyle("base", fontName=SANS, fontSize=9, leading=11.5, textColor=INK,
                          alignment=TA_LEFT, splitLongWords=1)

    def s(name: str, **kw) -> ParagraphStyle:
        return ParagraphStyle(name, parent=base, **kw)

    cell = s("cell", fontSize=8.5, leading=10.5)
    return Styles(
        title=s("title", fontName=SANS_BOLD, fontSize=20, leading=25, spaceAfter=4 * mm),
        subtitle=s("subtitle", fontSize=12, leading=15, textColor=MUTED, spaceAfter=8 * mm),
        h1=s("h1", fontName=SANS_BOLD, fontSize=14, leading=17, spaceBefore=2 * mm,
             spaceAfter=2 * mm, keepWithNext=1),
        h2=s("h2", fontName=SANS_BOLD, fontSize=11.5, leading=14, spaceBefore=1 * mm,
             spaceAfter=1.5 * mm, keepWithNext=1),
        h3=s("h3", fontName=SANS_BOLD, fontSize=9.5, leading=12, spaceBefore=2.5 * mm,
             spaceAfter=1 * mm, keepWithNext=1),
        body=base,
        small=s("small", fontSize=8, leading=10),
        muted=s("muted", fontSize=8, leading=10, textColor=MUTED),
        cell=cell,
        cell_bold=ParagraphStyle("cell_bold", parent=cell, fontName=SANS_BOLD),
        cell_head=ParagraphStyle("cell_head", parent=cell, fontName=SANS_BOLD, fontSize=8,
                                 leading=10),
        cell_small=ParagraphStyle("cell_small", parent=cell, fontSize=7.5, leading=9.2,
                                  textColor=MUTED),
        cell_right=ParagraphStyle("cell_right", parent=cell, alignment=TA_RIGHT),
        cell_center=ParagraphStyle("cell_center", parent=cell, alignment=TA_CENTER),
        choice=ParagraphStyle("choice", parent=cell, leading=14),
        compact=ParagraphStyle("compact", parent=cell, fontSize=7.5, leading=9.2),
        compact_head=ParagraphStyle("compact_head", parent=cell, fontName=SANS_BOLD,
                                    fontSize=7.3, leading=9),
        compact_na=ParagraphStyle("compact_na", parent=cell, fontName=SANS_ITALIC, textColor=NA,
                                  fontSize=7.5, leading=9.2),
        compact_flag=ParagraphStyle("compact_flag", parent=cell, fontSize=7.5, leading=9.2),
        flag=ParagraphStyle("flag", parent=cell, textColor=FLAG, fontSize=8, leading=10),
        na=ParagraphStyle("na", parent=cell, fontName=SANS_ITALIC, textColor=NA),
        annot=ParagraphStyle("annot", parent=cell, fontName=MONO, fontSize=7.5, leading=9.2,
                             textColor=ANNOT),
        mono=ParagraphStyle("mono", parent=cell, fontName=MONO, fontSize=7, leading=8.6),
        cover_label=ParagraphStyle("cover_label", parent=cell, textColor=MUTED, fontSize=9,
                                   leading=12),
        cover_value=ParagraphStyle("cover_value", parent=cell, fontSize=10, leading=13),
    )


def grid_style(header_rows: int = 1, zebra: bool = True) -> list[tuple]:
    """Table commands shared by every data table: thin grid, shaded header, top-aligned."""
    cmds: list[tuple] = [
        ("FONTNAME", (0, 0), (-1, -1), SANS),  # else ReportLab sets Helvetica in every cell
        ("GRID", (0, 0), (-1, -1), 0.4, GRID),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
    ]
    if header_rows:
        cmds.append(("BACKGROUND", (0, 0), (-1, header_rows - 1), HEAD_BG))
    if zebra:
        cmds.append(("ROWBACKGROUNDS", (0, header_rows), (-1, -1), [colors.white, ZEBRA]))
    return cmds


def plain_style(cmds: list[tuple]) -> TableStyle:
    """A table style without the grid (cover facts, write-in strips), in the embedded font."""
    return TableStyle([("FONTNAME", (0, 0), (-1, -1), SANS), *cmds])


def table_style(extra: list[tuple] | None = None, header_rows: int = 1,
                zebra: bool = True) -> TableStyle:
    return TableStyle(grid_style(header_rows, zebra) + list(extra or []))


__all__ = ["ANNOT", "ANNOT_BG", "BOX", "FLAG", "FLAG_BG", "FLAG_HEX", "GRID", "HEAD_BG", "INK",
           "MARGIN_BOTTOM", "MARGIN_TOP", "MARGIN_X", "MONO", "MUTED", "NA", "PAGE_SIZES",
           "RULE", "SANS", "SANS_BOLD", "SANS_ITALIC", "SECTION_BG", "ZEBRA", "Styles", "esc",
           "markup", "page_size", "para", "plain_style", "styles", "table_style"]
