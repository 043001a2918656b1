"""Assessment CRFs: the visit × form matrix, opening a form, saving it with its checks.

Every save validates through the one forms engine (crf_app.domain.forms), writes the changed
item values, their audit events (item by item, with the reason for change) and any automatic
queries raised by soft checks, all in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from crf_app.domain.addresses import form_address, item_address
from crf_app.domain.coverage import Content
from crf_app.domain.errors import FieldError, NotFound, ReasonRequired, StaleData, ValidationFailed
from crf_app.domain.forms import FormDef, FormLibrary, FormResult, validate_form
from crf_app.domain.roles import Action
from crf_app.domain.subjects import SubjectStatus
from crf_app.services.context import StudyHandle, UserContext
from crf_app.services.pipeline import write, write_action
from crf_app.services.queries import sync_auto_queries
from crf_app.services.signoff import form_flags
from crf_app.storage.audit import AuditWriter
from crf_app.storage.models import FormInstance, ItemValue, Query, Site, Subject, Visit

NOT_STARTED, IN_PROGRESS, COMPLETE = "not_started", "in_progress", "complete"
STATUS_LABELS = {NOT_STARTED: "Not started", IN_PROGRESS: "In progress", COMPLETE: "Complete",
                 "verified": "Verified", "signed": "Signed", "locked": "Locked"}

Key = tuple[str, int]  # (item id, row index); row 0 for items outside repeating sections


def form_library(study: StudyHandle) -> FormLibrary:
    """The study's form definitions as stored in its database (cached per open study)."""
    lib = getattr(study, "_form_library", None)
    if lib is None:
        lib = FormLibrary.from_dict(study.forms)
        study._form_library = lib  # type: ignore[attr-defined]
    return lib


def flatten(form: FormDef, values: dict[str, Any]) -> dict[Key, str]:
    """Engine values (plain items, and a list of row dicts per repeating section) -> rows."""
    out: dict[Key, str] = {}
    for key, value in values.items():
        if isinstance(value, list):
            for i, row in enumerate(value):
                for item_id, v in row.items():
                    if v not in (None, ""):
                        out[(item_id, i)] = v
        elif value not in (None, ""):
            out[(key, 0)] = value
    return out


def unflatten(form: FormDef, stored: dict[Key, str]) -> dict[str, Any]:
    """Stored rows -> the engine's raw structure (what the GUI shows and edits)."""
    repeating = {s.id: {i.id for i in s.items} for s in form.sections if s.repeating}
    section_of = {item: sid for sid, items in repeating.items() for item in items}
    raw: dict[str, Any] = {sid: [] for sid in repeating}
    for (item_id, row), value in sorted(stored.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sid = section_of.get(item_id)
        if sid is None:
            raw[item_id] = value
            continue
        rows = raw[sid]
        while len(rows) <= row:
            rows.append({})
        rows[row][item_id] = value
    return raw


@dataclass(frozen=True)
class FormCell:
    visit_id: int
    form_id: str
    status: str
    open_queries: int


@dataclass(frozen=True)
class FormMatrix:
    """Visits (rows) × forms (columns); a cell exists where the schedule has that form."""

    visits: list[tuple[int, str, str]]  # (visit id, code, name)
    forms: list[tuple[str, str]]  # (form id, title)
    cells: dict[tuple[int, str], FormCell]


@dataclass(frozen=True)
class FormSnapshot:
    subject_id: int
    screening_number: str
    subject_status: str
    visit_id: int
    visit_code: str
    visit_name: str
    form: FormDef
    status: str
    raw: dict[str, Any]
    row_version: int
    updated_at: datetime | None
    updated_by: str | None
    open_queries: dict[Key, list[str]] = field(default_factory=dict)

    @property
    def saved(self) -> bool:
        return self.row_version > 0


@dataclass(frozen=True)
class SaveOutcome:
    status: str
    row_version: int
    changed: list[Key]
    queries_opened: list[str]
    queries_closed: list[str]
    result: FormResult
    subject_status: str
    undone: list[str] = field(default_factory=list)  # verification / signatures removed


def _visit(s: Session, ctx: UserContext, visit_id: int) -> Visit:
    visit = s.get(Visit, visit_id)
    if visit is None or visit.subject.study_id != ctx.study.study_id:
        raise NotFound(f"visit {visit_id} does not exist in this study")
    return visit


def _form_for_visit(ctx: UserContext, visit: Visit, form_id: str) -> FormDef:
    if form_id not in ctx.study.protocol.visit(visit.visit_code).forms:
        raise NotFound(f"form {form_id!r} is not part of the {visit.visit_code} visit")
    return form_library(ctx.study).get(form_id)


def form_matrix(ctx: UserContext, subject_id: int) -> FormMatrix:
    """Status of every scheduled form of a subject, with its open-query count."""
    ctx.require(Action.VIEW)
    protocol = ctx.study.protocol
    lib = form_library(ctx.study)
    with ctx.study.db.reading() as s:
        subj = s.get(Subject, subject_id)
        if subj is None or subj.study_id != ctx.study.study_id:
            raise NotFound(f"subject {subject_id} does not exist in this study")
        ctx.require(Action.VIEW, subj.site.code)
        visits = list(subj.visits)
        instances = {(fi.visit_id, fi.form_id): fi for fi in s.execute(
            select(FormInstance).join(Visit).where(Visit.subject_id == subject_id)).scalars()}
        flags = form_flags(s, [fi.id for fi in instances.values()])
        signed = _signed_forms(s, subject_id, instances)
        queries: dict[int, int] = {}
        for fi_id in s.execute(select(Query.form_instance_id).where(
                Query.subject_id == subject_id, Query.state != "closed")).scalars():
            queries[fi_id] = queries.get(fi_id, 0) + 1
    cells = {}
    for v in visits:
        for form_id in protocol.visit(v.visit_code).forms:
            fi = instances.get((v.id, form_id))
            status = fi.status if fi else NOT_STARTED
            if fi is not None:  # the strongest sign-off state shows
                marks = flags.get(fi.id, set()) | ({"signed"} if fi.id in signed else set())
                for state in ("locked", "signed", "verified"):
                    if state in marks:
                        status = state
                        break
            cells[(v.id, form_id)] = FormCell(v.id, form_id, status,
                                              queries.get(fi.id, 0) if fi else 0)
    return FormMatrix([(v.id, v.visit_code, protocol.visit(v.visit_code).name) for v in visits],
                      [(f, lib.get(f).title) for f in protocol.form_ids()], cells)


def _signed_forms(s: Session, subject_id: int,
                  instances: dict[tuple[int, str], FormInstance]) -> set[int]:
    """Form instances covered by a valid signature (of the form, its visit, or the casebook)."""
    from crf_app.storage.signoff_models import Signature

    sigs = s.execute(select(Signature).where(Signature.subject_id == subject_id,
                                             Signature.state == "valid")).scalars().all()
    out: set[int] = set()
    for fi in instances.values():
        if fi.status != COMPLETE:
            continue
        for g in sigs:
            if g.scope == "casebook" or (g.scope == "visit" and g.visit_id == fi.visit_id) \
                    or (g.scope == "form" and g.form_instance_id == fi.id):
                out.add(fi.id)
    return out


def open_form(ctx: UserContext, visit_id: int, form_id: str) -> FormSnapshot:
    """The form's definition (the version the data was entered under) and its saved values."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        visit = _visit(s, ctx, visit_id)
        subj = visit.subject
        if ctx.user.site_code not in (None, subj.site.code):
            ctx.require(Action.VIEW, subj.site.code)
        form = _form_for_visit(ctx, visit, form_id)
        fi = s.execute(select(FormInstance).where(FormInstance.visit_id == visit_id,
                                                  FormInstance.form_id == form_id)
                       ).scalar_one_or_none()
        stored = {(v.item_id, v.row_index): v.value for v in fi.values} if fi else {}
        open_q: dict[Key, list[str]] = {}
        if fi is not None:
            for q in s.execute(select(Query).where(Query.form_instance_id == fi.id,
                                                   Query.state != "closed")).scalars():
                text = q.messages[0].text if q.messages else q.rule
                open_q.setdefault((q.item_id, q.row_index), []).append(text)
        return FormSnapshot(
            subj.id, subj.screening_number, subj.status, visit.id, visit.visit_code,
            ctx.study.protocol.visit(visit.visit_code).name, form,
            fi.status if fi else NOT_STARTED, unflatten(form, stored),
            fi.row_version if fi else 0, fi.updated_at if fi else None,
            fi.updated_by if fi else None, open_q)


def issue_errors(issues) -> list[FieldError]:
    """Engine issues -> FieldErrors whose field names the item (and row of a repeating table)."""
    return [FieldError(i.item_id if i.row is None else f"{i.item_id}[{i.row + 1}]", i.rule,
                       i.message) for i in issues]


# the visit, its subject and site, and the form instance if saved already: one SELECT per save
_SAVE_TARGET = (select(Visit, Subject, Site, FormInstance)
                .join(Subject, Visit.subject_id == Subject.id)
                .join(Site, Subject.site_id == Site.id)
                .outerjoin(FormInstance, (FormInstance.visit_id == Visit.id)
                           & (FormInstance.form_id == bindparam("form_id")))
                .where(Visit.id == bindparam("visit_id")))


@write_action("save_form", Action.EDIT_DATA)
def save_form(ctx: UserContext, visit_id: int, form_id: str, raw: dict[str, Any], *,
              complete: bool = False, reason: str = "",
              expected_version: int | None = None) -> SaveOutcome:
    """Validate and save a form; refuse with one message per item, else write it all at once.

    `expected_version` is the row version the user opened (0 for a new form): when the form
    was saved in between (by anyone, the same user in another window included), the save is
    refused instead of overwriting that work.
    """
    reason = reason.strip()
    with write(ctx, "save_form") as w:
        s = w.session
        found = s.execute(_SAVE_TARGET, {"visit_id": visit_id, "form_id": form_id}).first()
        if found is None or found[1].study_id != ctx.study.study_id:
            raise NotFound(f"visit {visit_id} does not exist in this study")
        visit, subj, site, fi = found
        w.authorise(site.code, site_id=site.id, subject_id=subj.id,
                    form_instance_id=fi.id if fi is not None else None)
        form = _form_for_visit(ctx, visit, form_id)
        result = validate_form(form, raw, complete=complete)
        if not result.ok:
            raise ValidationFailed(issue_errors(result.errors))
        current_version = fi.row_version if fi else 0
        if expected_version is not None and expected_version != current_version:
            by = fi.updated_by if fi else "someone"
            at = fi.updated_at.astimezone().strftime("%Y-%m-%d %H:%M") if fi and fi.updated_at \
                else "?"
            raise StaleData(f"This form was changed by {by} at {at} since you opened it — "
                            "reload it; your entries were not saved")
        new_form = fi is None
        subj_status_before = subj.status
        if fi is None:
            fi = FormInstance(visit_id=visit.id, form_id=form.id, form_version=form.version,
                              status=NOT_STARTED)
            s.add(fi)
            s.flush()
            w.new_form(fi.id)
            old: dict[Key, ItemValue] = {}  # a new form has no values yet (no SELECT for them)
        else:
            old = {(v.item_id, v.row_index): v for v in fi.values}
        new = flatten(form, result.values)
        changed = sorted(k for k in set(old) | set(new)
                         if (old[k].value if k in old else None) != new.get(k))
        corrected = [k for k in changed if k in old]
        if corrected and not reason:
            raise ReasonRequired()
        audit = w.audit
        label = form_address(subj.screening_number, visit.visit_code, form.id)
        in_table: dict[str, bool] = {}
        events: list[tuple[str, str, object, str, object, object, str]] = []
        added: list[dict[str, Any]] = []
        for key in changed:
            item_id, row = key
            before = old[key].value if key in old else None
            after = new.get(key)
            if item_id not in in_table:
                in_table[item_id] = _in_table(form, item_id)
            events.append(("update" if before is not None else "create", "item",
                           item_address(subj.screening_number, visit.visit_code, form.id,
                                        item_id, row if in_table[item_id] else None),
                           item_id, before, after, reason if before is not None else ""))
            if after is None:
                s.delete(old[key])
            elif before is None:
                added.append({"form_instance_id": fi.id, "item_id": item_id, "row_index": row,
                              "value": after})
            else:
                old[key].value = after
        status = COMPLETE if complete else IN_PROGRESS
        if fi.status != status:  # the form's status event (as record_fields writes it)
            events.append(("update", "form", label, "status", fi.status, status, reason))
        # the item and status events, then the new values: one INSERT each, not one per row
        audit.record_many(events, subject_id=subj.id)
        if added:
            s.execute(insert(ItemValue.__table__), added)
        if changed or status != fi.status:
            w.changed(Content.FORM, subj.id, visit_id=visit.id, form_instance_id=fi.id)
        fi.status = status
        fi.updated_at = ctx.now()
        fi.updated_by = ctx.user.username
        opened, closed = sync_auto_queries(s, audit, subj, visit, fi, form, result, ctx,
                                           new_form=new_form)
        subject_status = _apply_eligibility(ctx, subj, form, result, complete, audit)
        if subject_status != subj_status_before:
            w.changed(Content.SUBJECT, subj.id)
        w.finish()  # void what the change covers now, so the outcome can say what was undone
        s.flush()
        return SaveOutcome(status, fi.row_version, changed, opened, closed, result,
                           subject_status, list(w.changes.voided))


def _in_table(form: FormDef, item_id: str) -> bool:
    return form.section_of(item_id).repeating


def _apply_eligibility(ctx: UserContext, subj: Subject, form: FormDef, result: FormResult,
                       complete: bool, audit: AuditWriter) -> str:
    rule = ctx.study.protocol.eligibility
    if rule is None or form.id != rule.form or not complete:
        return subj.status
    if result.values.get(rule.item) == "N" and subj.status == SubjectStatus.SCREENING:
        audit.record_fields("update", "subject", subj.screening_number, {
            "status": (subj.status, SubjectStatus.SCREEN_FAILED),
            "status_reason": (subj.status_reason or None, "Not eligible (eligibility form)"),
        }, reason="eligibility criteria not met", subject_id=subj.id)
        subj.status = SubjectStatus.SCREEN_FAILED
        subj.status_reason = "Not eligible (eligibility form)"
        subj.status_date = ctx.today()
    return subj.status


def eligibility_verdict(s: Session, ctx: UserContext, subject_id: int) -> str | None:
    """'Y', 'N' or None (no eligibility form saved) for a subject."""
    rule = ctx.study.protocol.eligibility
    if rule is None:
        return None
    return s.execute(select(ItemValue.value).join(FormInstance).join(Visit).where(
        Visit.subject_id == subject_id, FormInstance.form_id == rule.form,
        ItemValue.item_id == rule.item)).scalar()
