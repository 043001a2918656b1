"""Gathering a study's data for an ODM 1.3.2 export, as plain data, subject batch by subject batch.

The writer (crf_app.odm) turns an `ExportPlan` into XML while `plan.subjects` reads the
database in batches inside one read transaction (a consistent snapshot), so neither side ever
holds the whole study in memory.

The OID scheme and the plain records live with the writer (crf_app.odm), so the
importer (crf_app.services.odm_import) reads back exactly what the writer wrote.

Transactional files carry the whole audited history of every value of the subjects changed since
the previous file of the chain (one ItemData per change, each with its AuditRecord); snapshot
files carry current values with their last AuditRecord. The adverse-event and dosing logs travel
the same way, one repeating item group per row (`log_rows`), and every signature of the subject
with it (`signature_records`).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, type_coerce
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.types import NullType

from crf_app.domain.addresses import ae_address, dose_address, form_address, visit_address
from crf_app.domain.errors import NotFound
from crf_app.domain.roles import Action
from crf_app.odm import (
    AE_LOG,
    DOSE_LOG,
    SNAPSHOT,
    SUBJECT_FIELDS,
    TRANSACTIONAL,
    VISIT_FIELDS,
    Cell,
    Change,
    ExportPlan,
    FormRecord,
    LogDef,
    LogField,
    LogRow,
    QueryNote,
    RecordField,
    SignatureRecord,
    SubjectRecord,
    VisitRecord,
    log_row_key,
    text_of,
    write_odm_file,
)
from crf_app.services.adverse_events import CRITERIA_COLUMNS
from crf_app.services.context import UserContext
from crf_app.services.dosing import QUERY_TARGET as DOSE_QUERY_TARGET
from crf_app.services.forms import form_library
from crf_app.services.signoff import MEANINGS
from crf_app.storage.audit import AuditWriter
from crf_app.storage.interchange_models import ExportedFile, InterchangeNode
from crf_app.storage.log_models import AdverseEvent, DosingRecord
from crf_app.storage.models import (
    AuditEvent,
    FormInstance,
    ItemValue,
    Query,
    Site,
    Study,
    Subject,
    User,
    Visit,
)
from crf_app.storage.signoff_models import Signature

DATA_ENTITIES = ("item", "subject", "visit", AE_LOG.entity, DOSE_LOG.entity)


# --- preparing an export ------------------------------------------------------------------------
def prepare_export(ctx: UserContext, *, subject: str | None = None, site: str | None = None,
                   snapshot: bool = False, batch: int = 50) -> ExportPlan:
    """Check the user may export, name the file (FileOID, PriorFileOID) and plan the batches.

    The whole study is a transactional file chained to this database's previous one and holds
    the subjects changed since then; `snapshot`, or choosing one subject or one site, makes a
    snapshot (not chained) of the subjects chosen.
    """
    site = site or ctx.user.site_code
    ctx.require(Action.EXPORT, site)
    study = ctx.study
    file_type = SNAPSHOT if snapshot or subject is not None or (
        site is not None and site != ctx.user.site_code) else TRANSACTIONAL
    now = ctx.now().astimezone(UTC)
    with study.db.transaction() as s:
        node = _node(s)
        if site is not None and site not in {x.code for x in study.protocol.sites}:
            raise NotFound(f"site {site!r} is not a site of this study")
        if subject is not None and s.execute(select(Subject.id).where(
                Subject.study_id == study.study_id,
                Subject.screening_number == subject)).first() is None:
            raise NotFound(f"subject {subject!r} does not exist in this study")
        last = s.execute(select(ExportedFile).where(ExportedFile.file_type == TRANSACTIONAL)
                         .order_by(ExportedFile.sequence.desc()).limit(1)).scalar_one_or_none()
        study_row = s.get(Study, study.study_id)
        assert study_row is not None
        users = [(u, n) for u, n in s.execute(select(User.username, User.full_name))]
        known = {u for u, _ in users}
        users += [(u, u) for u in s.execute(select(AuditEvent.username).distinct()).scalars()
                  if u not in known]
        sites = [(c, n) for c, n in s.execute(select(Site.code, Site.name).where(
            Site.study_id == study.study_id).order_by(Site.code))]
        created = study_row.created_at.date()
        meanings = list(MEANINGS) + sorted(set(s.execute(
            select(Signature.meaning).distinct()).scalars()) - set(MEANINGS))
    if file_type == TRANSACTIONAL:
        sequence = (last.sequence + 1) if last else 1
        prior, watermark = (last.file_oid, last.last_audit_id) if last else (None, 0)
        file_oid = f"{study.oid}.{node}.T{sequence:05d}"
    else:
        sequence, prior, watermark = 0, None, 0
        file_oid = f"{study.oid}.{node}.S{now:%Y%m%dT%H%M%S%f}"
    scope = ", ".join(x for x in (f"subject {subject}" if subject else "",
                                  f"site {site}" if site else "") if x) or "whole study"
    filters = _Filters(study.study_id, subject, site, watermark)
    with study.db.reading() as s:
        count = s.execute(select(func.count()).select_from(
            filters.subject_query().subquery())).scalar_one()
    plan = ExportPlan(
        study_oid=study.oid, title=study.title, protocol=study.protocol,
        library=form_library(study), metadata_version=study.metadata_version,
        study_created=created, file_oid=file_oid, prior_file_oid=prior, file_type=file_type,
        created_at=now, originator=f"crf-app node {node}",
        description=f"{study.title} — {scope} ({file_type.lower()}), exported by "
                    f"{ctx.user.username}",
        users=sorted(users), sites=sites, subject_count=count, subjects=iter(()),
        signature_meanings=meanings, sequence=sequence, scope=scope)
    plan.subjects = _subject_stream(ctx, plan, filters, batch)
    return plan


def record_export(ctx: UserContext, plan: ExportPlan, sha256: str, subjects: int) -> None:
    """Remember a written file (the next transactional file chains to it); audited."""
    with ctx.study.db.transaction() as s:
        s.add(ExportedFile(file_oid=plan.file_oid, prior_file_oid=plan.prior_file_oid,
                           file_type=plan.file_type, sequence=plan.sequence,
                           created_at=plan.created_at, created_by=ctx.user.username,
                           last_audit_id=plan.last_audit_id, subjects=subjects, sha256=sha256,
                           scope=plan.scope))
        AuditWriter(s, ctx.user.actor, now=ctx.now()).record(
            "export", "odm_file", plan.file_oid, new=f"{plan.file_type}, {subjects} subjects, "
            f"{plan.scope}", reason=f"ODM export (sha256 {sha256[:16]}…)")


def node_id(s: Session) -> str | None:
    """This database's interchange node id (None until its first export)."""
    return s.execute(select(InterchangeNode.node_id).limit(1)).scalar()


def _node(s: Session) -> str:
    existing = node_id(s)
    if existing:
        return existing
    new = uuid.uuid4().hex[:12].upper()
    s.add(InterchangeNode(node_id=new))
    return new


@dataclass(frozen=True)
class _Filters:
    study_id: int
    subject: str | None
    site: str | None
    watermark: int

    def subject_query(self):
        q = select(Subject.id).join(Site, Subject.site_id == Site.id).where(
            Subject.study_id == self.study_id)
        if self.subject is not None:
            q = q.where(Subject.screening_number == self.subject)
        if self.site is not None:
            q = q.where(Site.code == self.site)
        if self.watermark:
            q = q.where(Subject.id.in_(select(AuditEvent.subject_id).where(
                AuditEvent.id > self.watermark, AuditEvent.subject_id.is_not(None))))
        return q.order_by(Subject.id)


# --- reading subjects in batches ----------------------------------------------------------------
def _subject_stream(ctx: UserContext, plan: ExportPlan, filters: _Filters, batch: int
                    ) -> Iterator[SubjectRecord]:
    with ctx.study.db.reading() as s:
        plan.last_audit_id = s.execute(select(func.max(AuditEvent.id))).scalar() or 0
        ids = list(s.execute(filters.subject_query()).scalars())
        for start in range(0, len(ids), batch):
            yield from _batch(s, ids[start:start + batch], plan.transactional)
            s.expunge_all()


class _Moments:
    """The audit trail's timestamps as the column type reads them, each distinct one converted
    once (the values of one save share theirs: a study's trail has far fewer than its rows)."""

    def __init__(self, connection: Any):
        dialect = connection.dialect
        self.process = AuditEvent.__table__.c.occurred_at.type.dialect_impl(
            dialect).result_processor(dialect, None) or (lambda value: value)
        self.known: dict[Any, datetime] = {}

    def __call__(self, raw: Any) -> datetime:
        at = self.known.get(raw)
        if at is None:
            if len(self.known) > 50_000:
                self.known.clear()
            at = self.known[raw] = self.process(raw)
        return at


def _batch(s: Session, ids: list[int], transactional: bool) -> list[SubjectRecord]:
    subjects = s.execute(select(Subject, Site.code).join(Site, Subject.site_id == Site.id)
                         .where(Subject.id.in_(ids)).order_by(Subject.id)).all()
    visits: dict[int, list[Visit]] = defaultdict(list)
    for v in s.execute(select(Visit).where(Visit.subject_id.in_(ids))
                       .order_by(Visit.subject_id, Visit.sequence)).scalars():
        visits[v.subject_id].append(v)
    forms: dict[int, list[FormInstance]] = defaultdict(list)
    for fi in s.execute(select(FormInstance).join(Visit).where(Visit.subject_id.in_(ids))
                        .order_by(FormInstance.id)).scalars():
        forms[fi.visit_id].append(fi)
    values: dict[int, dict[tuple[str, int], str]] = defaultdict(dict)
    for fi_id, item, row, value in s.connection().execute(
            select(ItemValue.form_instance_id, ItemValue.item_id, ItemValue.row_index,
                   ItemValue.value).join(FormInstance).join(Visit)
            .where(Visit.subject_id.in_(ids))):
        values[fi_id][(item, row)] = value
    events: dict[int, dict[tuple[str, str, str], list[Change]]] = defaultdict(
        lambda: defaultdict(list))
    core = s.connection()  # plain rows: no ORM loading for the biggest reads
    moment = _Moments(core)
    for sid, entity, entity_id, fld, at, user, old, new, reason in core.execute(
            select(AuditEvent.subject_id, AuditEvent.entity, AuditEvent.entity_id,
                   AuditEvent.field, type_coerce(AuditEvent.occurred_at, NullType()),
                   AuditEvent.username, AuditEvent.old_value, AuditEvent.new_value,
                   AuditEvent.reason)
            .where(AuditEvent.subject_id.in_(ids), AuditEvent.entity.in_(DATA_ENTITIES))
            .order_by(AuditEvent.id)):
        events[sid][(entity, entity_id, fld)].append(Change(moment(at), user, new, reason, old))
    queries: dict[int, list[Query]] = defaultdict(list)
    for q in s.execute(select(Query).where(Query.subject_id.in_(ids))
                       .options(selectinload(Query.messages)).order_by(Query.id)).scalars():
        queries[q.subject_id].append(q)
    aes: dict[int, list[Any]] = defaultdict(list)  # plain rows: attributes by column name
    ae_table = AdverseEvent.__table__
    for ae in core.execute(select(ae_table).where(ae_table.c.subject_id.in_(ids))
                           .order_by(ae_table.c.id)):
        aes[ae.subject_id].append(ae)
    doses: dict[int, list[Any]] = defaultdict(list)
    dose_table = DosingRecord.__table__
    for dose in core.execute(select(dose_table).where(dose_table.c.subject_id.in_(ids))
                             .order_by(dose_table.c.id)):
        doses[dose.subject_id].append(dose)
    signatures = signature_records(s, ids)
    out = []
    for subj, site in subjects:
        sn = subj.screening_number
        rec = _subject_record(subj, site, visits[subj.id], forms, values,
                              events.get(subj.id, {}), queries[subj.id], transactional)
        dose_notes: dict[int, list[QueryNote]] = defaultdict(list)
        for q in queries[subj.id]:
            if q.target == DOSE_QUERY_TARGET:
                dose_notes[q.row_index].append(_note(q))
        subject_events = events.get(subj.id, {})
        rec.logs = log_rows(AE_LOG, aes[subj.id], sn, subject_events, transactional)
        rec.logs += log_rows(DOSE_LOG, doses[subj.id], sn, subject_events, transactional,
                             dose_notes)
        rec.signatures = signatures.get(subj.id, [])
        out.append(rec)
    return out


# --- the logs and signatures --------------------------------------------------------------------
def log_text(value: object) -> str | None:
    """A log column as the text its audit events record ('' counts as no value)."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return text_of(value)


def _field_text(f: LogField) -> Callable[[Any], str | None]:
    """How one log field reads as text (what log_text gives, without testing the type)."""
    column = f.model_column
    if f.attr == "criteria":
        return lambda row: ",".join(code for code, col in CRITERIA_COLUMNS.items()
                                    if getattr(row, col)) or None
    if f.codelist == "CL.CRFAPP.NY":
        return lambda row: None if (v := getattr(row, column)) is None else "Y" if v else "N"
    if f.data_type in ("date", "time", "datetime"):
        return lambda row: None if (v := getattr(row, column)) is None else v.isoformat()
    return lambda row: log_text(getattr(row, column))


_FIELD_TEXT = {log.entity: [(f.attr, _field_text(f)) for f in log.fields]
               for log in (AE_LOG, DOSE_LOG)}


def log_values(log: LogDef, row: Any) -> dict[str, str | None]:
    """Every field of a log row (AdverseEvent, DosingRecord) as text, by audit field name."""
    return {attr: text(row) for attr, text in _FIELD_TEXT[log.entity]}


def log_keys(rows: list[Any]) -> list[str]:
    """The log_row_key of each row (rows of one subject, in id order)."""
    seen: dict[tuple[datetime, str], int] = defaultdict(int)
    keys = []
    for row in rows:
        seen[(row.created_at, row.created_by)] += 1
        keys.append(log_row_key(row.created_at, row.created_by,
                                seen[(row.created_at, row.created_by)]))
    return keys


def log_label(log: LogDef, screening_number: str, row: Any) -> str:
    """The audit entity id of a log row (as services.adverse_events and services.dosing write
    it): the AE number for adverse events, the database id for dosing records."""
    if log.entity == AE_LOG.entity:
        return ae_address(screening_number, row.sequence)
    return dose_address(screening_number, row.id)


def log_rows(log: LogDef, rows: list[Any], screening_number: str, events: dict,
             transactional: bool, notes: dict[int, list[QueryNote]] | None = None
             ) -> list[LogRow]:
    """A subject's rows of one log (in id order) with each audited value's history."""
    if not rows:
        return []
    by_row: dict[str, dict[str, list[Change]]] = defaultdict(dict)
    for (entity, entity_id, fld), history in events.items():
        if entity == log.entity:
            by_row[entity_id][fld] = history
    spec = [(f.item_id, f.audited, text) for f, (_, text) in
            zip(log.fields, _FIELD_TEXT[log.entity], strict=True)]
    attrs = [f.attr for f in log.fields]
    out = []
    for row, key in zip(rows, log_keys(rows), strict=True):
        row_events = by_row.get(log_label(log, screening_number, row), {})
        cells = []
        for attr, (item_id, audited, text) in zip(attrs, spec, strict=True):
            value = text(row)
            history = row_events.get(attr, []) if audited else []
            if value is not None or (transactional and history):
                cells.append(Cell(item_id, value, history, complete_history=True))
        out.append(LogRow(log.entity, key, cells, row.updated_at, row.updated_by,
                          (notes or {}).get(row.id, [])))
    return out


def signature_records(s: Session, ids: list[int]) -> dict[int, list[SignatureRecord]]:
    """The signatures of the subjects `ids`, oldest first, by subject id."""
    out: dict[int, list[SignatureRecord]] = defaultdict(list)
    for sig, code, form in s.execute(
            select(Signature, Visit.visit_code, FormInstance.form_id)
            .outerjoin(Visit, Signature.visit_id == Visit.id)
            .outerjoin(FormInstance, Signature.form_instance_id == FormInstance.id)
            .where(Signature.subject_id.in_(ids)).order_by(Signature.signed_at, Signature.id)):
        out[sig.subject_id].append(SignatureRecord(
            sig.scope, code, form, sig.username, sig.printed_name, sig.meaning, sig.signed_at,
            sig.values_hash, sig.forms_signed, sig.state, sig.invalidated_at,
            sig.invalidated_reason or ""))
    return out


def _record_cells(spec: tuple[RecordField, ...], obj: Any, entity: str, entity_id: str,
                  events: dict, current: dict[str, Any] | None = None) -> list[Cell]:
    cells = []
    for f in spec:
        value = (current or {}).get(f.attr, getattr(obj, f.attr, None))
        history = list(events.get((entity, entity_id, f.attr), []))
        cells.append(Cell(f.item_id, text_of(value), history, complete_history=True))
    return cells


def _note(q: Query) -> QueryNote:
    thread = [m.text for m in q.messages] or [q.rule]
    text = thread[0] + "".join(f" — {m.by} ({m.kind}): {m.text}" for m in q.messages[1:])
    return QueryNote(q.item_id, q.row_index, q.state, q.origin, text)


def _subject_record(subj: Subject, site: str, visits: list[Visit], forms: dict, values: dict,
                    events: dict, queries: list[Query], transactional: bool) -> SubjectRecord:
    sn = subj.screening_number
    rec = SubjectRecord(sn, site, _record_cells(SUBJECT_FIELDS, subj, "subject", sn, events,
                                                {"site": site}))
    by_fi: dict[int | None, list[Query]] = defaultdict(list)
    by_visit: dict[int | None, list[Query]] = defaultdict(list)
    for q in queries:
        if q.target == DOSE_QUERY_TARGET:
            continue  # annotations of their dosing record
        if q.form_instance_id is not None:
            by_fi[q.form_instance_id].append(q)
        else:
            by_visit[q.visit_id].append(q)
    rec.queries = [_note(q) for q in by_visit.pop(None, [])]
    item_events: dict[str, list[tuple[str, int, list[Any]]]] = defaultdict(list)
    for (entity, entity_id, fld), rows in events.items():
        if entity == "item":
            item_events[entity_id.rsplit("/", 1)[0]].append((fld, _row_of(entity_id), rows))
    for v in visits:
        vrec = VisitRecord(v.visit_code, _record_cells(VISIT_FIELDS, v, "visit",
                                                       visit_address(sn, v.visit_code), events),
                           queries=[_note(q) for q in by_visit.get(v.id, [])])
        for fi in forms.get(v.id, []):
            frec = FormRecord(fi.form_id, fi.status, fi.updated_at, fi.updated_by,
                              queries=[_note(q) for q in by_fi.get(fi.id, [])])
            stored = values.get(fi.id, {})
            cells: dict[tuple[str, int], Cell] = {}
            for (item, row), value in stored.items():
                cells[(item, row)] = Cell(item, value, row=row, complete_history=True)
            for fld, row, rows in item_events.get(form_address(sn, v.visit_code, fi.form_id), []):
                cell = cells.get((fld, row))
                if cell is None:  # a value entered, then removed: its history stays
                    cell = cells[(fld, row)] = Cell(fld, None, row=row, complete_history=True)
                cell.history = list(rows)
            frec.cells = sorted((c for c in cells.values()
                                 if transactional or c.value is not None),
                                key=lambda c: (c.row, c.item_id))
            vrec.forms.append(frec)
        rec.visits.append(vrec)
    return rec


def _row_of(entity_id: str) -> int:
    last = entity_id.rsplit("/", 1)[-1]
    if last.endswith("]") and "[" in last:
        return int(last[last.index("[") + 1:-1]) - 1
    return 0


@dataclass
class ExportSummary:
    path: Path
    file_oid: str
    prior_file_oid: str | None
    file_type: str
    subjects: int
    sha256: str = ""
    warnings: list[str] = field(default_factory=list)


def export_odm(ctx: UserContext, out: Path, *, subject: str | None = None,
               site: str | None = None, snapshot: bool = False,
               progress: Callable[[int, int], None] | None = None,
               cancelled: Callable[[], bool] | None = None, batch: int = 50) -> ExportSummary:
    """Write an ODM 1.3.2 file of the study (or one subject, or one site) to `out`; audited.

    A transactional export is remembered so the next one chains to it (PriorFileOID); a
    cancelled or failed one leaves no file and does not enter the chain.
    """
    out = Path(out)
    plan = prepare_export(ctx, subject=subject, site=site, snapshot=snapshot, batch=batch)
    try:
        written = write_odm_file(out, plan, progress=progress, cancelled=cancelled)
    finally:
        plan.close()
    record_export(ctx, plan, written.sha256, written.subjects)
    return ExportSummary(out, plan.file_oid, plan.prior_file_oid, plan.file_type,
                         written.subjects, written.sha256, written.warnings)
