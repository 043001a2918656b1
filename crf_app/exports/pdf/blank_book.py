"""The blank CRF book: every form of every visit with its items, codes, units, limits and
branching notes, and boxes to write in (a paper back-up). Annotated, it prints each form once
with its variable names, types, codelists and expressions, like an SDTM annotated CRF."""

from __future__ import annotations

import hashlib

from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, PageBreak, Spacer, Table

from crf_app.domain.casebook import BlankBook, BlankVisit
from crf_app.domain.forms import FormDef, ItemDef, SectionDef
from crf_app.exports.pdf.base import Marker, PageInfo, Running, draw_running, render
from crf_app.exports.pdf.entry_fields import (
    DATE_GROUPS,
    Boxes,
    Lines,
    entry_for,
    limits_note,
    readable_condition,
)
from crf_app.exports.pdf.formatting import fmt_utc
from crf_app.exports.pdf.styles import (
    ANNOT_BG,
    GRID,
    MARGIN_X,
    SANS,
    SANS_BOLD,
    SECTION_BG,
    esc,
    markup,
    page_size,
    para,
    plain_style,
    styles,
    table_style,
)
from crf_app.exports.pdf.tables import DataTable, column_widths

BLANK_ROWS = 8  # rows printed for a repeating section (fewer if max_rows is lower)
COMPUTE_INLINE = 90  # longer formulas print under the form, not in the annotation column


def definitions_digest(forms: tuple[FormDef, ...]) -> str:
    """SHA-256 over the fingerprints of the printed form definitions."""
    joined = "\n".join(f"{f.id}:{f.version}:{f.fingerprint()}" for f in forms)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


class BlankBookRenderer:
    """Renders a `BlankBook` to PDF bytes; `annotated` adds variable names and definitions."""

    def __init__(self, book: BlankBook, annotated: bool = False, page_size_name: str = "A4"):
        self.book = book
        self.annotated = annotated
        self.pagesize = page_size(page_size_name)
        self.width = self.pagesize[0] - 2 * MARGIN_X
        self.kind = "Annotated CRF" if annotated else "Blank CRF book"
        study = book.study
        self.running = Running(
            header_left=f"{study.study_id} · {self.kind}",
            header_left_sub=(f"{study.title} · Protocol {study.protocol_number} "
                             f"v{study.protocol_version}"),
            header_right_sub=("Annotated: variable names in blue" if annotated else
                              "Subject number: ________________"),
            footer_right=(f"Generated {fmt_utc(book.generated_at)} by {book.generated_by} · "
                          f"crf-app {book.app_version}"),
            footer_second=f"SHA-256 of the form definitions: {definitions_digest(book.forms)}")

    def render(self) -> bytes:
        return render(self.pagesize, self.story(), decorate=self.decorate,
                      title=f"{self.kind} — {self.book.study.study_id}",
                      author=self.book.generated_by, subject=self.book.study.title)

    def decorate(self, canvas: Canvas, info: PageInfo) -> None:
        draw_running(canvas, info, self.running)

    # --- the story --------------------------------------------------------------------------
    def story(self) -> list[Flowable]:
        out: list[Flowable] = [*self.cover(), PageBreak(), *self.schedule()]
        if self.annotated:
            for form in self.book.forms:
                used = [v.code for v in self.book.visits if form.id in v.forms]
                out += [PageBreak(), Marker(f"{form.title} (v{form.version})", form.title, 0),
                        *self.form(form, None, used)]
            return out
        for visit in self.book.visits:
            for index, form_id in enumerate(visit.forms):
                form = self.book.form(form_id)
                out.append(PageBreak())
                if index == 0:
                    out += [Marker(None, f"Visit {visit.code} — {visit.name}", 0)]
                out += [Marker(f"{visit.code} · {form.title} (v{form.version})", form.title, 1),
                        *self.form(form, visit, [])]
        return out

    def cover(self) -> list[Flowable]:
        st = styles()
        study = self.book.study
        forms = len(self.book.forms)
        pages_note = (f"Each of the {forms} forms is printed once with its variable names "
                      "(blue), data types, codelists, limits and expressions."
                      if self.annotated else
                      "Every form of every visit is printed with boxes to write in. Write in "
                      "black ink, one character per box. To correct, strike through once, write "
                      "the new value beside it, initial and date it; never overwrite or erase. "
                      "Transcribe into crf-app as soon as it is available again.")
        facts = [("Study", f"{study.study_id} — {study.title}"),
                 ("Protocol", f"{study.protocol_number}, version {study.protocol_version}"),
                 ("Sponsor", study.sponsor or "—"),
                 ("Generated at", fmt_utc(self.book.generated_at)),
                 ("Generated by", self.book.generated_by),
                 ("Application", f"crf-app {self.book.app_version}")]
        table = Table([[para(k, st.cover_label), para(v, st.cover_value)] for k, v in facts],
                      colWidths=[42 * mm, self.width - 42 * mm], hAlign="LEFT")
        table.setStyle(plain_style([("LINEBELOW", (0, 0), (-1, -1), 0.4, GRID),
                                   ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        legend = ("* required item · “Permitted” values outside are refused by crf-app · "
                  "“expected” / “reference range” values outside are accepted and queried · "
                  "“Only if …” items are skipped unless the condition holds.")
        return [Marker("Cover", "Cover", 0), Spacer(1, 8 * mm), para(self.kind, st.title),
                para(study.title, st.subtitle), table, Spacer(1, 6 * mm),
                para(pages_note, st.body), Spacer(1, 3 * mm), para(legend, st.muted)]

    def schedule(self) -> list[Flowable]:
        st = styles()
        visits = self.book.visits
        head = [para("Form", st.cell_head)] + [
            markup(f"{esc(v.code)}<br/><font size=6.5>day {v.day}</font>", st.cell_head)
            for v in visits]
        rows: list[list] = [head]
        for form in self.book.forms:
            rows.append([para(f"{form.title} (v{form.version})", st.cell)] + [
                para("●" if form.id in v.forms else "", st.cell_center) for v in visits])
        windows = "; ".join(f"{v.code} {v.name}: day {v.day} (−{v.window_before}/"
                            f"+{v.window_after} days)" for v in visits)
        first = 0.34 * self.width
        table = Table(rows, colWidths=[first] + [(self.width - first) / len(visits)] * len(visits),
                      repeatRows=1, hAlign="LEFT")
        table.setStyle(table_style([("ALIGN", (1, 0), (-1, -1), "CENTER")]))
        return [Marker("Schedule of assessments", "Schedule of assessments", 0),
                para("Schedule of assessments", st.h1), table, Spacer(1, 2 * mm),
                para(f"Visit windows: {windows}.", st.muted)]

    # --- one form ---------------------------------------------------------------------------
    def form(self, form: FormDef, visit: BlankVisit | None, used_at: list[str]
             ) -> list[Flowable]:
        st = styles()
        out: list[Flowable] = []
        if visit is not None:
            out.append(para(f"Visit {visit.code} — {visit.name} (study day {visit.day})",
                            st.muted))
        out.append(para(form.title, st.h2))
        if self.annotated:
            out.append(markup(f"<font color='#1f4fbf'>Form <b>{esc(form.id)}</b> version "
                              f"{form.version} · fingerprint {form.fingerprint()[:16]} · used at "
                              f"{esc(', '.join(used_at) or '—')}</font>", st.annot))
        if form.description:
            out.append(para(form.description, st.muted))
        if visit is not None:
            out += [Spacer(1, 1.5 * mm), self.subject_strip()]
        for section in form.sections:
            title = section.title + (f" — one row per entry (up to {section.max_rows})"
                                     if section.repeating and section.max_rows else "")
            out.append(para(title, st.h3))
            if self.annotated:
                out.append(para(f"section {section.id}" + (" (repeating)" if section.repeating
                                                           else ""), st.annot))
            if section.help:
                out.append(para(section.help, st.muted))
            out += self.table(form, section) if section.repeating else self.items(form, section)
        derived = [i for i in form.items if i.compute and len(i.compute) > COMPUTE_INLINE]
        if self.annotated and derived:
            out.append(para("Derivations", st.h3))
            out += [para(f"{i.id} = {' '.join(i.compute.split())}", st.annot) for i in derived]
        if form.checks:
            out.append(para("Edit checks", st.h3))
            for check in form.checks:
                effect = "refused" if check.severity == "hard" else "accepted and queried"
                if self.annotated:
                    out.append(para(f"{check.id} ({check.severity}): {check.expression} — "
                                    f"{check.message}", st.annot))
                    continue
                first = form.item(check.items[0]).label if check.items else check.id
                out.append(para(f"• {first}: {check.message} (otherwise {effect} by crf-app)",
                                st.cell_small))
        if visit is not None:
            out += [Spacer(1, 4 * mm), self.completed_strip()]
        return out

    def subject_strip(self) -> Table:
        st = styles()
        cells = [[para("Site", st.cell_small), Boxes([(3, "")], [])],
                 [para("Subject number", st.cell_small), Boxes([(10, "")], [])],
                 [para("Initials", st.cell_small), Boxes([(3, "")], [])],
                 [para("Visit date", st.cell_small), Boxes(DATE_GROUPS, ["-", "-"])]]
        widths = [0.13, 0.35, 0.13, 0.39]
        table = Table([cells], colWidths=[w * self.width for w in widths], hAlign="LEFT")
        table.setStyle(plain_style([("BOX", (0, 0), (-1, -1), 0.6, GRID),
                                   ("BACKGROUND", (0, 0), (-1, -1), SECTION_BG),
                                   ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        return table

    def completed_strip(self) -> Table:
        st = styles()
        cells = [[para("Completed by (name)", st.cell_small), Lines(1)],
                 [para("Date", st.cell_small), Boxes(DATE_GROUPS, ["-", "-"])],
                 [para("Transcribed into crf-app by / date", st.cell_small), Lines(1)]]
        table = Table([cells], colWidths=[w * self.width for w in (0.3, 0.33, 0.37)],
                      hAlign="LEFT")
        table.setStyle(plain_style([("BOX", (0, 0), (-1, -1), 0.6, GRID),
                                   ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        return table

    def question(self, form: FormDef, item: ItemDef) -> list[Flowable]:
        st = styles()
        star = " *" if item.required else ""
        out: list[Flowable] = [markup(f"<b>{esc(item.label)}</b>{star}", st.cell)]
        if item.help:
            out.append(para(item.help, st.cell_small))
        notes = limits_note(item)
        if notes:
            out.append(para(notes, st.cell_small))
        if item.show_if:
            out.append(para(f"Only if {readable_condition(item.show_if, form)}; otherwise "
                            "leave empty (not applicable).", st.flag))
        if item.is_computed:
            out.append(para("Computed by crf-app after transcription.", st.cell_small))
        return out

    def annotation(self, item: ItemDef) -> list[Flowable]:
        st = styles()
        lines = [f"<b>{esc(item.id)}</b>", esc(item.type + (f", {item.unit}" if item.unit
                                                          else ""))]
        if item.codes:
            name = item.codelist if isinstance(item.codelist, str) else ""
            codes = ", ".join(c.code for c in item.codes)
            lines.append(esc(f"{name}: {codes}" if name else f"codes: {codes}"))
        if item.show_if:
            lines.append(esc(f"show_if: {item.show_if}"))
        if item.compute:
            formula = " ".join(item.compute.split())
            lines.append(esc(f"= {formula}" if len(formula) <= COMPUTE_INLINE
                             else "= see Derivations below"))
        return [markup("<br/>".join(lines), st.annot)]

    def items(self, form: FormDef, section: SectionDef) -> list[Flowable]:
        widths = (0.38, 0.4, 0.22) if self.annotated else (0.44, 0.56)
        rows = []
        for item in section.items:
            row: list = [self.question(form, item), entry_for(item)]
            if self.annotated:
                row.append(self.annotation(item))
            rows.append(row)
        table = DataTable(rows, colWidths=[w * self.width for w in widths])
        extra = [("BACKGROUND", (2, 0), (2, -1), ANNOT_BG)] if self.annotated else []
        extra += [("TOPPADDING", (0, 0), (-1, -1), 4), ("BOTTOMPADDING", (0, 0), (-1, -1), 5)]
        table.setStyle(table_style(extra, header_rows=0, zebra=False))
        return [table]

    def table(self, form: FormDef, section: SectionDef) -> list[Flowable]:
        st = styles()
        head: list = [para("#", st.cell_head)]
        for item in section.items:
            text = f"{esc(item.label)}{' *' if item.required else ''}"
            if item.unit:
                text += f"<br/><font size=7>({esc(item.unit)})</font>"
            if self.annotated:
                text += f"<br/><font color='#1f4fbf' size=7>{esc(item.id)}</font>"
            head.append(markup(text, st.cell_head))
        count = min(BLANK_ROWS, section.max_rows or BLANK_ROWS)
        rows = [head] + [[para(str(n), st.cell_small)] + [""] * len(section.items)
                         for n in range(1, count + 1)]
        labels = ["#"] + [f"{i.label}{' *' if i.required else ''}"
                          + (f" {i.id}" if self.annotated else "") for i in section.items]
        widths = column_widths(labels, [], self.width, font=SANS, bold=SANS_BOLD, size=8,
                               fixed=[7 * mm])
        table = DataTable(rows, colWidths=widths, rowHeights=[None] + [9 * mm] * count,
                          repeatRows=1)
        table.setStyle(table_style(zebra=False))
        out: list[Flowable] = [table, Spacer(1, 1.5 * mm)]
        for item in section.items:
            notes = []
            if item.codes:
                notes.append("; ".join(f"{c.code} = {c.label}" for c in item.codes))
            limit = limits_note(item)
            if limit:
                notes.append(limit)
            if item.type in ("date", "partial_date"):
                notes.append("YYYY-MM-DD")
            if item.show_if:
                notes.append(f"only if {readable_condition(item.show_if, form)}"
                             + (f" (show_if: {item.show_if})" if self.annotated else ""))
            if notes:
                name = ""
                if self.annotated:
                    codelist = (f", codelist {item.codelist}" if isinstance(item.codelist, str)
                                else "")
                    name = f" ({item.id}{codelist})"
                out.append(markup(f"<b>{esc(item.label)}</b>{esc(name)}: "
                                  f"{esc(' · '.join(notes))}", st.cell_small))
        return out


def render_blank_book(book: BlankBook, annotated: bool = False,
                      page_size_name: str = "A4") -> bytes:
    """The blank (or annotated) CRF book as PDF bytes."""
    return BlankBookRenderer(book, annotated, page_size_name).render()
