"""Gathering a study's data for an ODM 1.3.2 export, as plain data, subject batch by subject batch.

The writer (crf_app.exports.odm) turns an `ExportPlan` into XML while `plan.subjects` reads the
database in batches inside one read transaction (a consistent snapshot), so neither side ever
holds the whole study in memory.

The OID scheme and the plain records live with the writer (crf_app.exports.odm), so the
importer (crf_app.services.odm_import) reads back exactly what the writer wrote.

Transactional files carry the whole audited history of every value of the subjects changed since
the previous file of the chain (one ItemData per change, each with its AuditRecord); snapshot
files carry current values with their last AuditRecord.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from crf_app.domain.errors import NotFound
from crf_app.domain.roles import Action
from crf_app.exports.odm import (
    SNAPSHOT,
    SUBJECT_FIELDS,
    TRANSACTIONAL,
    VISIT_FIELDS,
    Cell,
    Change,
    ExportPlan,
    FormRecord,
    QueryNote,
    RecordField,
    SubjectRecord,
    VisitRecord,
    text_of,
    write_odm_file,
)
from crf_app.services.context import UserContext
from crf_app.services.forms import form_library
from crf_app.storage.audit import AuditWriter
from crf_app.storage.interchange_models import ExportedFile, InterchangeNode
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

# Extension point for the adverse-event and dosing logs (not part of this export yet): a log
# source contributes FormDefs to the metadata and FormRecords (repeating item groups, one row
# per log entry) to each subject. Register objects with `log_forms()` -> list[FormDef] and
# `subject_forms(session, subject_ids)` -> {subject id: [(visit code, FormRecord)]}.
LOG_FORM_SOURCES: list[Any] = []


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
        sequence=sequence, scope=scope)
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


def _changes(rows: list[Any]) -> list[Change]:
    return [Change(r.occurred_at, r.username, r.new_value, r.reason, r.old_value) for r in rows]


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
    for fi_id, item, row, value in s.execute(
            select(ItemValue.form_instance_id, ItemValue.item_id, ItemValue.row_index,
                   ItemValue.value).join(FormInstance).join(Visit)
            .where(Visit.subject_id.in_(ids))):
        values[fi_id][(item, row)] = value
    events: dict[int, dict[tuple[str, str, str], list[Any]]] = defaultdict(
        lambda: defaultdict(list))
    for ev in s.execute(select(AuditEvent.subject_id, AuditEvent.entity, AuditEvent.entity_id,
                               AuditEvent.field, AuditEvent.occurred_at, AuditEvent.username,
                               AuditEvent.old_value, AuditEvent.new_value, AuditEvent.reason)
                        .where(AuditEvent.subject_id.in_(ids),
                               AuditEvent.entity.in_(("item", "subject", "visit")))
                        .order_by(AuditEvent.id)):
        events[ev.subject_id][(ev.entity, ev.entity_id, ev.field)].append(ev)
    queries: dict[int, list[Query]] = defaultdict(list)
    for q in s.execute(select(Query).where(Query.subject_id.in_(ids))
                       .options(selectinload(Query.messages)).order_by(Query.id)).scalars():
        queries[q.subject_id].append(q)
    out = []
    for subj, site in subjects:
        out.append(_subject_record(subj, site, visits[subj.id], forms, values,
                                   events.get(subj.id, {}), queries[subj.id], transactional))
    return out


def _record_cells(spec: tuple[RecordField, ...], obj: Any, entity: str, entity_id: str,
                  events: dict, current: dict[str, Any] | None = None) -> list[Cell]:
    cells = []
    for f in spec:
        value = (current or {}).get(f.attr, getattr(obj, f.attr, None))
        history = _changes(events.get((entity, entity_id, f.attr), []))
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
                                                       f"{sn}/{v.visit_code}", events),
                           queries=[_note(q) for q in by_visit.get(v.id, [])])
        for fi in forms.get(v.id, []):
            frec = FormRecord(fi.form_id, fi.status, fi.updated_at, fi.updated_by,
                              queries=[_note(q) for q in by_fi.get(fi.id, [])])
            stored = values.get(fi.id, {})
            cells: dict[tuple[str, int], Cell] = {}
            for (item, row), value in stored.items():
                cells[(item, row)] = Cell(item, value, row=row, complete_history=True)
            for fld, row, rows in item_events.get(f"{sn}/{v.visit_code}/{fi.form_id}", []):
                cell = cells.get((fld, row))
                if cell is None:  # a value entered, then removed: its history stays
                    cell = cells[(fld, row)] = Cell(fld, None, row=row, complete_history=True)
                cell.history = _changes(rows)
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
