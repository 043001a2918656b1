"""Icons and the style sheet from resources/."""

from __future__ import annotations

from functools import cache

from PySide6.QtGui import QIcon

from crf_app.paths import RESOURCES_DIR


@cache
def icon(name: str) -> QIcon:
    return QIcon(str(RESOURCES_DIR / "icons" / f"{name}.svg"))


def style_sheet() -> str:
    return (RESOURCES_DIR / "style.qss").read_text(encoding="utf-8")
