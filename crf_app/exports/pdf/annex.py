"""The casebook's logs and annexes: adverse events, dosing with compliance, queries with their
threads, the signature manifest and the audit trail."""

from __future__ import annotations

from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import CondPageBreak, Flowable, PageBreak, Spacer

from crf_app.domain.casebook import Casebook
from crf_app.exports.pdf.base import Marker
from crf_app.exports.pdf.formatting import DASH, fmt_date, fmt_time, fmt_utc
from crf_app.exports.pdf.styles import (
    FLAG_BG,
    HEAD_BG,
    SANS,
    SANS_BOLD,
    esc,
    markup,
    para,
    styles,
    table_style,
)
from crf_app.exports.pdf.tables import DataTable, column_widths

Cell = str | tuple[str, ParagraphStyle]  # plain text (table style) or text with its own style


def _table(head: list[str], rows: list[list[Cell]], width: float, *, compact: bool = False,
           extra: list[tuple] | None = None, fixed: list[float | None] | None = None
           ) -> DataTable:
    """A data table of plain (user) text, columns sized so that words are not broken."""
    st = styles()
    body, head_style = (st.compact, st.compact_head) if compact else (st.cell, st.cell_head)
    texts = [[c if isinstance(c, str) else c[0] for c in row] for row in rows]
    widths = column_widths(head, texts, width, font=SANS, bold=SANS_BOLD,
                           size=body.fontSize, fixed=fixed or [])
    data: list[list] = [[para(h, head_style) for h in head]]
    data += [[para(c, body) if isinstance(c, str) else para(*c) for c in row] for row in rows]
    table = DataTable(data, colWidths=widths, repeatRows=1)
    table.setStyle(table_style(extra))
    return table


def _heading(title: str, context: str | None = None, new_page: bool = False
             ) -> list[Flowable]:
    """A section heading; short sections share a page (a new one starts when < 60 mm remain)."""
    start: list[Flowable] = [PageBreak()] if new_page else [CondPageBreak(60 * mm),
                                                            Spacer(1, 4 * mm)]
    return [*start, Marker(context or title, title, 0), para(title, styles().h1)]


def annexes(cb: Casebook, width: float) -> list[Flowable]:
    """Every section after the visits: the logs, queries and signatures (sharing pages when
    short), then the audit trail on a page of its own."""
    return [*adverse_events(cb, width), *dosing(cb, width), *queries(cb, width),
            *signatures(cb, width), *audit_trail(cb, width)]


def adverse_events(cb: Casebook, width: float) -> list[Flowable]:
    st = styles()
    out = _heading("Adverse events", new_page=True)
    if not cb.adverse_events:
        return [*out, para("No adverse events recorded for this subject.", st.body)]
    rows: list[list[Cell]] = []
    extra = []
    flag = ParagraphStyle("ae_flag", parent=st.compact, textColor=st.flag.textColor)
    for r, ae in enumerate(cb.adverse_events, start=1):
        start = fmt_date(ae.start_date) + (f" {fmt_time(ae.start_time)}" if ae.start_time else "")
        serious = "Yes: " + "; ".join(ae.criteria) if ae.serious else "No"
        rows.append([str(ae.number), ae.term + (f"\n{ae.location}" if ae.location else ""),
                     start, "Ongoing" if ae.ongoing else fmt_date(ae.end_date),
                     f"{ae.severity}, grade {ae.grade}", (serious, flag) if ae.serious else serious,
                     ae.relationship, ae.action, ae.outcome])
        if ae.serious:
            extra.append(("BACKGROUND", (0, r), (-1, r), FLAG_BG))
    out.append(_table(["#", "Term", "Start", "End", "Severity", "Serious", "Relationship",
                       "Action taken", "Outcome"], rows, width, compact=True, extra=extra))
    treated = [ae for ae in cb.adverse_events if ae.treatment]
    if treated:
        out += [Spacer(1, 2 * mm), para("Treatment given", st.h3)]
        out += [markup(f"<b>#{ae.number}</b> {esc(ae.treatment)}", st.cell) for ae in treated]
    return out


def dosing(cb: Casebook, width: float) -> list[Flowable]:
    st = styles()
    out = _heading("Dosing log")
    if not cb.doses:
        return [*out, para("No dosing recorded for this subject.", st.body)]
    out += [para(f"Compliance: {cb.dosing_compliance}", st.body), Spacer(1, 2 * mm)]
    rows: list[list[Cell]] = []
    extra = []
    for r, d in enumerate(cb.doses, start=1):
        rows.append([fmt_date(d.date), fmt_time(d.time), d.dose_mg or DASH, str(d.instillations),
                     d.total_mg or DASH, d.nostril, d.lot, d.given_by,
                     f"Missed: {d.missed_reason}" if d.missed else ""])
        if d.missed:
            extra.append(("BACKGROUND", (0, r), (-1, r), FLAG_BG))
    out.append(_table(["Date", "Time", "Dose (mg)", "Instillations", "Total (mg)", "Nostril",
                       "Lot", "Given by", "Missed dose"], rows, width, compact=True,
                      extra=extra))
    return out


def queries(cb: Casebook, width: float) -> list[Flowable]:
    st = styles()
    out = _heading("Queries")
    if not cb.queries:
        return [*out, para("No queries were raised for this subject.", st.body)]
    open_count = sum(q.state != "closed" for q in cb.queries)
    out.append(para(f"{len(cb.queries)} queries, {open_count} not closed. Each query is "
                    "followed by its thread of messages in order.", st.muted))
    for q in cb.queries:
        where = " · ".join(p for p in (q.visit, q.form, q.item) if p)
        if q.row is not None:
            where += f" (row {q.row})"
        closed = f"; closed {fmt_utc(q.closed_at)} by {q.closed_by}" if q.closed_at else ""
        head = markup(f"<b>Q{q.number}</b> · {esc(q.state)} · {esc(q.origin)} · {esc(where)}"
                      f"<br/><font size=7>opened {esc(fmt_utc(q.opened_at))} by "
                      f"{esc(q.opened_by)}{esc(closed)}</font>", st.cell)
        rows: list[list] = [[head, "", "", ""]]
        for m in q.messages:
            rows.append([para(fmt_utc(m.at), st.cell_small), para(m.by, st.cell),
                         para(m.kind, st.cell), para(m.text, st.cell)])
        if not q.messages:
            rows.append([para(DASH, st.cell), "", "", para("(no messages)", st.na)])
        table = DataTable(rows, colWidths=[w * width for w in (0.15, 0.17, 0.09, 0.59)],
                          repeatRows=1)
        table.setStyle(table_style([("SPAN", (0, 0), (-1, 0)),
                                    ("BACKGROUND", (0, 0), (-1, 0), HEAD_BG)], zebra=False))
        out += [Spacer(1, 3 * mm), table]
    return out


def signatures(cb: Casebook, width: float) -> list[Flowable]:
    st = styles()
    out = _heading("Signature manifest")
    if not cb.signatures:
        return [*out, para("No electronic signatures have been recorded for this subject.",
                           st.body)]
    rows: list[list[Cell]] = [[(s.printed_name, st.cell_bold), s.username,
                               fmt_utc(s.signed_at, seconds=True), s.meaning, s.scope or DASH]
                              for s in cb.signatures]
    out.append(_table(["Printed name", "User", "Signed at (UTC)", "Meaning", "What was signed"],
                      rows, width))
    out += [Spacer(1, 2 * mm), para("Each signature was applied in crf-app with the signer's "
                                    "user name and password (21 CFR 11.50: printed name, date "
                                    "and time, meaning).", st.muted)]
    return out


def audit_trail(cb: Casebook, width: float) -> list[Flowable]:
    st = styles()
    out = _heading("Audit trail annex", "Audit trail", new_page=True)
    if not cb.audit:
        return [*out, para("No audit-trail events for this subject.", st.body)]
    out.append(para(f"{len(cb.audit)} events in the order they were recorded (UTC). "
                    "Old → new values as stored; — is an empty value.", st.muted))
    rows: list[list[Cell]] = []
    for ev in cb.audit:
        what = ev.entity_id.replace("/", " / ")
        if ev.field and ev.field not in ev.entity_id.rsplit("/", 1)[-1]:
            what += f" · {ev.field}"
        change = f"{DASH if ev.old is None else ev.old} → {DASH if ev.new is None else ev.new}"
        rows.append([fmt_utc(ev.at, seconds=True).removesuffix(" UTC"), ev.username,
                     f"{ev.action} {ev.entity}", what, change, ev.reason])
    out.append(_table(["When (UTC)", "Who", "Action", "What", "Old → new", "Reason"], rows,
                      width, compact=True, fixed=[0.12 * width, None, 0.09 * width]))
    return out
