"""Merge conflicts: the list a data manager works through, and resolving one (audited)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from crf_app import odm as oe
from crf_app.domain.coverage import Content
from crf_app.domain.errors import FieldError, NotFound, ValidationFailed
from crf_app.domain.roles import Action
from crf_app.domain.subjects import schedule
from crf_app.services.context import UserContext
from crf_app.services.odm_import.logs import MODELS
from crf_app.services.odm_import.targets import AttrTarget, ItemTarget, LogTarget, Target
from crf_app.services.pipeline import write, write_action
from crf_app.storage.audit import Actor
from crf_app.storage.interchange_models import MergeConflict
from crf_app.storage.models import FormInstance, ItemValue, Site, Subject, Visit


@dataclass(frozen=True)
class ConflictRow:
    id: int
    subject: str
    site: str
    visit: str
    form: str
    field: str
    row: int
    local_value: str | None
    local_user: str | None
    local_at: datetime | None
    incoming_value: str | None
    incoming_user: str | None
    incoming_at: datetime | None
    file_oid: str
    state: str
    resolution: str | None
    resolved_by: str | None


def _form_label(c: MergeConflict, form: str | None) -> str:
    log = oe.LOG_BY_ENTITY.get(c.entity)
    if log is not None:  # "Adverse events (AE3)", "Dosing (dose/17)"
        return f"{log.name} ({c.entity_id.partition('/')[2]})"
    return form or ""


def list_conflicts(ctx: UserContext, *, state: str | None = "open") -> list[ConflictRow]:
    """Merge conflicts (open ones by default), oldest first."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        q = (select(MergeConflict, Subject.screening_number, Site.code, Visit.visit_code,
                    FormInstance.form_id)
             .join(Subject, MergeConflict.subject_id == Subject.id)
             .join(Site, Subject.site_id == Site.id)
             .outerjoin(Visit, MergeConflict.visit_id == Visit.id)
             .outerjoin(FormInstance, MergeConflict.form_instance_id == FormInstance.id)
             .where(Subject.study_id == ctx.study.study_id).order_by(MergeConflict.id))
        if state is not None:
            q = q.where(MergeConflict.state == state)
        if ctx.user.site_code:
            q = q.where(Site.code == ctx.user.site_code)
        return [ConflictRow(c.id, sn, site, visit or "", _form_label(c, form), c.field,
                            c.row_index, c.local_value, c.local_user, c.local_at,
                            c.incoming_value, c.incoming_user, c.incoming_at, c.file_oid,
                            c.state, c.resolution, c.resolved_by)
                for c, sn, site, visit, form in s.execute(q)]


@write_action("resolve_conflict", Action.IMPORT)
def resolve_conflict(ctx: UserContext, conflict_id: int, choice: str, reason: str = "") -> None:
    """A data manager keeps the local value or takes the incoming one; audited.

    Either way the incoming change is recorded in the value's history (so the next exchange
    knows it was seen); choosing "local" then records the local value again, which the other
    laptop will receive as the newer change.
    """
    if choice not in ("local", "incoming"):
        raise ValidationFailed(FieldError("choice", "codelist",
                                          "Choose 'local' or 'incoming'"))
    ctx.require(Action.CLOSE_QUERY)
    with write(ctx, "resolve_conflict") as w:
        s, now = w.session, w.now
        c = s.get(MergeConflict, conflict_id)
        if c is None:
            raise NotFound(f"merge conflict {conflict_id} does not exist")
        subj = s.get(Subject, c.subject_id)
        assert subj is not None
        if subj.study_id != ctx.study.study_id:
            raise NotFound(f"merge conflict {conflict_id} does not exist")
        if c.state != "open":
            raise ValidationFailed(FieldError("conflict", "state",
                                              f"Conflict {conflict_id} is already {c.state}"))
        site_ids = {code: sid for code, sid in s.execute(
            select(Site.code, Site.id).where(Site.study_id == subj.study_id))}
        target = target_of(s, c, subj, site_ids)
        # the conflict's data must not be locked, whichever value is chosen (keeping the
        # local value records it again as the newer change)
        w.authorise_subject(subj, form_instance_id=c.form_instance_id
                            if c.entity == "item" else None)
        current = target.current()
        audit = w.audit
        note = f"merge conflict {c.id} resolved by {ctx.user.username}: " + (
            "incoming value chosen" if choice == "incoming" else "local value kept") + (
            f" — {reason.strip()}" if reason.strip() else "")
        audit.now = (c.incoming_at or now).astimezone(UTC)
        audit.actor = Actor(None, c.incoming_user) if c.incoming_user and c.incoming_at \
            else ctx.user.actor
        audit.record("update" if choice == "incoming" else "merge_rejected", target.entity,
                     target.entity_id, field=target.field, old=current, new=c.incoming_value,
                     reason=f"imported from {c.file_oid}"
                            + (f": {c.incoming_reason}" if c.incoming_reason else "")
                            + f" ({note})", subject_id=subj.id)
        audit.now, audit.actor = now, ctx.user.actor
        if choice == "incoming":
            target.apply(c.incoming_value)
            if c.incoming_value != current:
                w.changed(*content_of(c), subj.id, visit_id=c.visit_id,
                          form_instance_id=c.form_instance_id)
        else:
            audit.record("update", target.entity, target.entity_id, field=target.field,
                         old=c.incoming_value, new=current, reason=note, subject_id=subj.id)
        ev = audit.record("resolve", "merge_conflict", c.id, field="resolution",
                          old="open", new=choice, reason=note, subject_id=subj.id)
        s.flush()
        if isinstance(target, AttrTarget) and target.attr == "baseline_date" and \
                subj.baseline_date is not None:
            for pv in schedule(ctx.study.protocol, subj.baseline_date):
                for v in subj.visits:
                    if v.visit_code == pv.code:
                        v.window_start, v.window_end = pv.window_start, pv.window_end
        c.state, c.resolution = "resolved", choice
        c.resolved_by, c.resolved_at, c.resolution_event_id = ctx.user.username, now, ev.id


def content_of(c: MergeConflict) -> tuple[Content]:
    """The kind of signed content a conflict's value is."""
    if c.entity == "item":
        return (Content.FORM,)
    if c.entity == "visit":
        return (Content.VISIT_DATE,)
    if c.entity == "subject":
        return (Content.SUBJECT,)
    return (Content.ADVERSE_EVENT if oe.LOG_BY_ENTITY[c.entity] is oe.AE_LOG else Content.DOSE,)


def target_of(s: Session, c: MergeConflict, subj: Subject, site_ids: dict[str, int]) -> Target:
    """The stored value a conflict is about."""
    if c.entity == "item":
        fi = s.get(FormInstance, c.form_instance_id)
        if fi is None:
            raise NotFound(f"the form of merge conflict {c.id} no longer exists")
        store = {(v.item_id, v.row_index): v for v in s.execute(
            select(ItemValue).where(ItemValue.form_instance_id == fi.id)).scalars()}
        return ItemTarget(s, fi, store, c.field, c.row_index, c.entity_id)
    log = oe.LOG_BY_ENTITY.get(c.entity)
    if log is not None:
        model = MODELS[log.entity]
        tail = c.entity_id.rpartition("/AE" if log is oe.AE_LOG else "/dose/")[2]
        q = select(model).where(model.subject_id == subj.id)
        q = q.where(model.sequence == int(tail)) if log is oe.AE_LOG else \
            q.where(model.id == int(tail))
        row = s.execute(q).scalar_one_or_none() if tail.isdigit() else None
        if row is None:
            raise NotFound(f"the record of merge conflict {c.id} no longer exists")
        return LogTarget(log, log.field(c.field), row, c.entity_id)
    spec = oe.SUBJECT_FIELDS if c.entity == "subject" else oe.VISIT_FIELDS
    f = next(x for x in spec if x.attr == c.field)
    obj: Subject | Visit | None = subj if c.entity == "subject" else s.get(Visit, c.visit_id)
    if obj is None:
        raise NotFound(f"the visit of merge conflict {c.id} no longer exists")
    return AttrTarget(obj, f, c.entity_id, site_ids)
