"""Gathering one subject's casebook (crf_app.domain.casebook) from the database.

Read-only: one read transaction for the forms, queries and audit trail, after the subject and
its visits come from `subject_detail`. The adverse-event log, the dosing log and signatures
enter through the hooks `_adverse_events`, `_doses` and `_signatures`, which return nothing
until those tables are wired in.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from crf_app import __version__
from crf_app.domain.adverse_events import AdverseEvent
from crf_app.domain.casebook import (
    AuditRow,
    BlankBook,
    BlankVisit,
    Casebook,
    QueryMessageRecord,
    QueryRecord,
    SignatureRecord,
    StudyInfo,
    SubjectInfo,
    VisitRecord,
    ae_row,
    compliance_text,
    dose_row,
    form_record,
)
from crf_app.domain.dosing import DoseRecord
from crf_app.domain.forms import FormDef, FormLibrary
from crf_app.domain.roles import Action
from crf_app.domain.subjects import SubjectStatus
from crf_app.services.context import UserContext
from crf_app.services.forms import STATUS_LABELS, form_library, unflatten
from crf_app.services.subjects import SubjectDetail, subject_detail
from crf_app.storage.models import AuditEvent, FormInstance, Query, Visit


def _adverse_events(s: Session, subject_id: int) -> list[AdverseEvent]:
    """The subject's adverse events in the order they were recorded."""
    from crf_app.services.adverse_events import _criteria
    from crf_app.storage.log_models import AdverseEvent as AeRow

    rows = s.execute(select(AeRow).where(AeRow.subject_id == subject_id)
                     .order_by(AeRow.sequence)).scalars()
    return [AdverseEvent(term=r.term, verbatim=r.verbatim, location=r.location,
                         start_date=r.start_date, start_time=r.start_time,
                         end_date=r.end_date, ongoing=r.ongoing, severity=r.severity,
                         grade=r.grade, serious=r.serious, criteria=_criteria(r),
                         relationship=r.relationship, action=r.action, outcome=r.outcome,
                         treatment=r.treatment) for r in rows]


def _doses(s: Session, subject_id: int) -> list[DoseRecord]:
    """The subject's dosing records, given and missed, in date order."""
    from crf_app.services.dosing import dosing_records, to_record

    return [to_record(r) for r in dosing_records(s, subject_id)]


def _signatures(s: Session, subject_id: int) -> list[SignatureRecord]:
    """Every signature applied to the subject's data (invalidated ones say so)."""
    from crf_app.storage.signoff_models import Signature

    rows = s.execute(select(Signature).where(Signature.subject_id == subject_id)
                     .order_by(Signature.id)).scalars()
    return [SignatureRecord(g.printed_name, g.username, g.signed_at,
                            g.meaning + ("" if g.state == "valid"
                                         else f" — INVALIDATED: {g.invalidated_reason}"),
                            f"{g.scope} ({g.forms_signed} forms, sha256 {g.values_hash[:12]}…)")
            for g in rows]


def study_info(ctx: UserContext) -> StudyInfo:
    p = ctx.study.protocol
    return StudyInfo(p.study_id, p.title, p.protocol_number, p.protocol_version, p.sponsor)


def generated_by(ctx: UserContext) -> str:
    u = ctx.user
    return f"{u.full_name} ({u.username}, {u.role.label})"


def build_casebook(ctx: UserContext, subject_id: int, *, now: datetime | None = None
                   ) -> Casebook:
    """Everything the subject's casebook prints; NotFound for an unknown subject,
    PermissionDenied unless the user may export data at the subject's site."""
    ctx.require(Action.EXPORT)
    detail = subject_detail(ctx, subject_id)
    ctx.require(Action.EXPORT, detail.site)
    protocol = ctx.study.protocol
    lib = form_library(ctx.study)
    with ctx.study.db.reading() as s:
        instances = s.execute(
            select(FormInstance).join(Visit).where(Visit.subject_id == subject_id)
            .options(selectinload(FormInstance.values))).scalars().all()
        queries = s.execute(
            select(Query).where(Query.subject_id == subject_id).order_by(Query.id)
            .options(selectinload(Query.messages))).scalars().all()
        audit = s.execute(select(AuditEvent).where(AuditEvent.subject_id == subject_id)
                          .order_by(AuditEvent.id)).scalars().all()
        by_visit: dict[int, dict[str, FormInstance]] = {}
        for fi in instances:
            by_visit.setdefault(fi.visit_id, {})[fi.form_id] = fi
        where = {fi.id: (v.code, fi.form_id) for v in detail.visits
                 for fi in by_visit.get(v.id, {}).values()}
        query_keys: dict[int, dict[tuple[str, int], list[int]]] = {}
        for q in queries:
            if q.form_instance_id is not None and q.item_id:
                query_keys.setdefault(q.form_instance_id, {}).setdefault(
                    (q.item_id, q.row_index), []).append(q.id)
        visits = tuple(_visit(v, by_visit.get(v.id, {}), protocol.visit(v.code).forms, lib,
                              query_keys) for v in detail.visits)
        query_records = tuple(_query(q, where.get(q.form_instance_id or -1), lib)
                              for q in queries)
        audit_rows = tuple(AuditRow(e.occurred_at, e.username, e.action, e.entity, e.entity_id,
                                    e.field, e.old_value, e.new_value, e.reason)
                           for e in audit)
        adverse = _adverse_events(s, subject_id)
        doses = _doses(s, subject_id)
        signatures = tuple(_signatures(s, subject_id))
    arm = protocol.arm(detail.arm)
    compliance = compliance_text(doses, protocol.regimen(arm.regimen), ctx.today()) \
        if doses else "No dosing recorded."
    return Casebook(
        study=study_info(ctx), subject=_subject(detail), generated_at=now or ctx.now(),
        generated_by=generated_by(ctx), app_version=__version__, visits=visits,
        adverse_events=tuple(ae_row(n, ae) for n, ae in enumerate(adverse, start=1)),
        doses=tuple(dose_row(d) for d in doses), dosing_compliance=compliance,
        queries=query_records, signatures=signatures, audit=audit_rows)


def _subject(d: SubjectDetail) -> SubjectInfo:
    return SubjectInfo(d.screening_number, d.initials, d.sex, d.birth_year, d.site, d.site_name,
                       d.arm, d.arm_name, SubjectStatus.LABELS.get(d.status, d.status),
                       d.status_reason, d.status_date, d.consent_date, d.baseline_date)


def _visit(v, saved: dict[str, FormInstance], scheduled: list[str], lib: FormLibrary,
           query_keys: dict[int, dict[tuple[str, int], list[int]]]) -> VisitRecord:
    forms = []
    for form_id in scheduled:
        fi = saved.get(form_id)
        if fi is None:
            continue
        form = lib.get(form_id)
        raw = unflatten(form, {(iv.item_id, iv.row_index): iv.value for iv in fi.values})
        forms.append(form_record(form, raw, status=STATUS_LABELS.get(fi.status, fi.status),
                                 updated_at=fi.updated_at, updated_by=fi.updated_by or "",
                                 queries=query_keys.get(fi.id, {})))
    missing = tuple(lib.get(f).title for f in scheduled if f not in saved)
    return VisitRecord(v.code, v.name, v.day, v.planned_date, v.window_start, v.window_end,
                       v.actual_date, v.status, v.deviation, tuple(forms), missing)


def _query(q: Query, where: tuple[str, str] | None, lib: FormLibrary) -> QueryRecord:
    visit, form_title, item, row = "", "", q.item_id, None
    if where is not None:
        visit, form_id = where
        form: FormDef = lib.get(form_id)
        form_title = form.title
        if q.item_id:
            try:
                item = f"{form.item(q.item_id).label} ({q.item_id})"
                if form.section_of(q.item_id).repeating:
                    row = q.row_index + 1
            except KeyError:
                item = q.item_id
    messages = tuple(QueryMessageRecord(m.at, m.by, m.kind, m.text) for m in q.messages)
    return QueryRecord(q.id, visit, form_title, item, row, q.state, q.origin, q.opened_at,
                       q.opened_by, q.closed_at, q.closed_by or "", messages)


def build_blank_book(ctx: UserContext, *, now: datetime | None = None) -> BlankBook:
    """The schedule and every scheduled form's definition, for the blank CRF book."""
    ctx.require(Action.VIEW)
    protocol = ctx.study.protocol
    lib = form_library(ctx.study)
    visits = tuple(BlankVisit(v.code, v.name, v.day, v.window.before, v.window.after,
                              tuple(v.forms)) for v in protocol.visits)
    forms = tuple(lib.get(f) for f in protocol.form_ids())
    return BlankBook(study_info(ctx), visits, forms, now or ctx.now(), generated_by(ctx),
                     __version__)
