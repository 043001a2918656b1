"""The embedded Unicode fonts (DejaVu, from resources/fonts): Greek, Cyrillic, symbols.

The standard PDF fonts cover Latin-1 only; "TNF-α", "NF-κB" or a Cyrillic comment would print
as black boxes. Every style uses these families instead; ReportLab embeds the subset used.
"""

from __future__ import annotations

import threading

from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont

from crf_app.paths import RESOURCES_DIR

FONT_DIR = RESOURCES_DIR / "fonts"
SANS = "CrfSans"
SANS_BOLD = "CrfSans-Bold"
SANS_ITALIC = "CrfSans-Oblique"
MONO = "CrfMono"

_FILES = {
    SANS: "DejaVuSans.ttf",
    SANS_BOLD: "DejaVuSans-Bold.ttf",
    SANS_ITALIC: "DejaVuSans-Oblique.ttf",
    MONO: "DejaVuSansMono.ttf",
}
_lock = threading.Lock()
_registered = False


class FontMissing(RuntimeError):
    """A font file the PDFs need is not installed with the app."""


def register_fonts() -> None:
    """Register the fonts once per process (safe to call from several threads)."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        for name, filename in _FILES.items():
            path = FONT_DIR / filename
            if not path.is_file():
                raise FontMissing(f"font file {path} is missing; reinstall crf-app")
            pdfmetrics.registerFont(TTFont(name, str(path)))
        # <b> and <i> in paragraphs pick the matching face; there is no bold-oblique file.
        pdfmetrics.registerFontFamily(SANS, normal=SANS, bold=SANS_BOLD, italic=SANS_ITALIC,
                                      boldItalic=SANS_BOLD)
        pdfmetrics.registerFontFamily(MONO, normal=MONO, bold=MONO, italic=MONO,
                                      boldItalic=MONO)
        _registered = True
