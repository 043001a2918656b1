"""ReportLab CRF PDFs: the completed casebook of a subject and the blank (annotated) CRF book.

Plain data in (crf_app.domain.casebook), PDF bytes out; nothing here reads the database.
`RENDERER` is what the export services are given to render with (they sit below this layer
and cannot import it). Importing this package is cheap: ReportLab is loaded on first use, so
the app's entry point can install the renderer without slowing start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crf_app.domain.casebook import BlankBook, Casebook


class ReportLabRenderer:
    """The PDF renderer the services call (stateless, so it can go to a worker process)."""

    def casebook(self, casebook: Casebook, page_size: str = "A4") -> bytes:
        from crf_app.exports.pdf.casebook import CasebookRenderer

        return CasebookRenderer(casebook, page_size).render()

    def blank_book(self, book: BlankBook, annotated: bool = False,
                   page_size: str = "A4") -> bytes:
        from crf_app.exports.pdf.blank_book import BlankBookRenderer

        return BlankBookRenderer(book, annotated, page_size).render()


RENDERER = ReportLabRenderer()

__all__ = ["RENDERER", "ReportLabRenderer"]
