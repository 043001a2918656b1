"""Queries (discrepancies): automatic ones from soft edit checks; the thread of messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crf_app.domain.errors import FieldError, NotFound, ValidationFailed
from crf_app.domain.roles import Action
from crf_app.services.context import UserContext
from crf_app.services.pipeline import write, write_action
from crf_app.storage.audit import AuditWriter
from crf_app.storage.models import FormInstance, Query, QueryMessage, Site, Subject, Visit

if TYPE_CHECKING:
    from crf_app.domain.forms import FormDef, FormResult

SYSTEM_USER = "system (edit check)"


def sync_auto_queries(s: Session, audit: AuditWriter, subj: Subject, visit: Visit,
                      fi: FormInstance, form: FormDef, result: FormResult,
                      ctx: UserContext, *, new_form: bool = False) -> tuple[list[str], list[str]]:
    """Open a query for each new soft-check warning; close automatic queries no longer true.

    `new_form`: `fi` was created in this transaction, so it has no queries yet (no SELECT).
    Returns (messages of queries opened, messages of queries closed).
    """
    now = ctx.now()
    wanted = {(w.item_id, w.row if w.row is not None else 0, w.rule): w
              for w in result.warnings}
    existing = {} if new_form else {(q.item_id, q.row_index, q.rule): q for q in s.execute(
        select(Query).where(Query.form_instance_id == fi.id, Query.origin == "auto",
                            Query.state != "closed")).scalars()}
    opened, closed = [], []
    for key, warning in wanted.items():
        if key in existing:
            continue
        q = Query(subject_id=subj.id, visit_id=visit.id, form_instance_id=fi.id,
                  item_id=key[0], row_index=key[1], target="item", origin="auto", rule=key[2],
                  state="open", opened_at=now, opened_by=SYSTEM_USER)
        q.messages.append(QueryMessage(at=now, by=SYSTEM_USER, kind="open",
                                       text=warning.message))
        s.add(q)
        s.flush()
        audit.record("create", "query", q.id, field="state", new="open",
                     reason=warning.message, subject_id=subj.id)
        opened.append(warning.message)
    for key, q in existing.items():
        if key in wanted:
            continue
        text = "Closed automatically: the corrected value passes the check"
        q.messages.append(QueryMessage(at=now, by=SYSTEM_USER, kind="close", text=text))
        audit.record("update", "query", q.id, field="state", old=q.state, new="closed",
                     reason=text, subject_id=subj.id)
        q.state, q.closed_at, q.closed_by = "closed", now, SYSTEM_USER
        closed.append(q.messages[0].text if q.messages else q.rule)
    return opened, closed


# --- the query workflow -----------------------------------------------------------------------
# States: open → answered → closed; closed → open again (re-open). Monitors and data managers
# raise, close and re-open; coordinators and investigators answer.




@dataclass(frozen=True)
class QueryRow:
    id: int
    subject_id: int
    subject: str
    site: str
    visit: str
    form_id: str
    item_id: str
    row: int
    origin: str
    state: str
    opened_at: datetime
    opened_by: str
    age_days: int
    last_message: str


@dataclass(frozen=True)
class QueryMessageRow:
    at: datetime
    by: str
    kind: str
    text: str


def _text(text: str, field: str = "text") -> str:
    text = (text or "").strip()
    if not text:
        raise ValidationFailed(FieldError(field, "required", "A message is required"))
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise ValidationFailed(FieldError(field, "control_characters",
                                          "The message contains control characters"))
    return text


@write_action("raise_query", Action.RAISE_QUERY, changes_data=False)
def raise_query(ctx: UserContext, visit_id: int, form_id: str, item_id: str, text: str,
                row: int = 0) -> int:
    """A monitor or data manager questions an item of a saved form; returns the query id."""
    text = _text(text)
    with write(ctx, "raise_query") as w:
        s = w.session
        fi = s.execute(select(FormInstance).where(FormInstance.visit_id == visit_id,
                                                  FormInstance.form_id == form_id)
                       ).scalar_one_or_none()
        if fi is None:
            raise NotFound(f"form {form_id} has not been saved for this visit yet")
        visit = fi.visit
        subj = visit.subject
        if subj.study_id != ctx.study.study_id:
            raise NotFound(f"visit {visit_id} does not exist in this study")
        w.authorise_subject(subj)
        w.touched("query")
        from crf_app.services.forms import form_library

        form = form_library(ctx.study).get(form_id)
        if item_id and item_id not in {i.id for i in form.items}:
            raise ValidationFailed(FieldError("item", "unknown_item",
                                              f"Form {form_id} has no item {item_id}"))
        now = ctx.now()
        q = Query(subject_id=subj.id, visit_id=visit.id, form_instance_id=fi.id,
                  item_id=item_id, row_index=row, target="item" if item_id else "form",
                  origin="manual", rule="", state="open", opened_at=now,
                  opened_by=ctx.user.username)
        q.messages.append(QueryMessage(at=now, by=ctx.user.username, kind="open", text=text))
        s.add(q)
        s.flush()
        w.audit.record(
            "create", "query", q.id, field="state", new="open", reason=text, subject_id=subj.id)
        return q.id


_TRANSITIONS = {  # the query workflow: (write action, from states, to state)
    "answer": ("answer_query", {"open"}, "answered"),
    "close": ("close_query", {"open", "answered"}, "closed"),
    "reopen": ("reopen_query", {"closed", "answered"}, "open"),
}


def _transition(ctx: UserContext, query_id: int, kind: str, text: str) -> None:
    name, from_states, to_state = _TRANSITIONS[kind]
    text = _text(text)
    with write(ctx, name) as w:
        s = w.session
        q = s.get(Query, query_id)
        if q is None:
            raise NotFound(f"query {query_id} does not exist")
        subj = s.get(Subject, q.subject_id)
        if subj is None or subj.study_id != ctx.study.study_id:
            raise NotFound(f"query {query_id} does not exist")
        w.authorise_subject(subj)
        w.touched("query")
        if q.state not in from_states:
            raise ValidationFailed(FieldError(
                "state", "transition", f"Query {query_id} is {q.state}; it cannot be "
                f"{'closed' if kind == 'close' else kind + 'ed'} now"))
        now = w.now
        q.messages.append(QueryMessage(at=now, by=ctx.user.username, kind=kind, text=text))
        w.audit.record(
            "update", "query", q.id, field="state", old=q.state, new=to_state, reason=text,
            subject_id=subj.id)
        q.state = to_state
        if to_state == "closed":
            q.closed_at, q.closed_by = now, ctx.user.username
        else:
            q.closed_at, q.closed_by = None, None


@write_action("answer_query", Action.ANSWER_QUERY, changes_data=False)
def answer_query(ctx: UserContext, query_id: int, text: str) -> None:
    """Site staff answer an open query."""
    _transition(ctx, query_id, "answer", text)


@write_action("close_query", Action.CLOSE_QUERY, changes_data=False)
def close_query(ctx: UserContext, query_id: int, text: str) -> None:
    """A monitor or data manager closes a query (refused when it is already closed)."""
    _transition(ctx, query_id, "close", text)


@write_action("reopen_query", Action.CLOSE_QUERY, changes_data=False)
def reopen_query(ctx: UserContext, query_id: int, text: str) -> None:
    """A monitor or data manager re-opens a closed or answered query."""
    _transition(ctx, query_id, "reopen", text)


def list_queries(ctx: UserContext, *, site: str | None = None, subject_id: int | None = None,
                 state: str | None = None, min_age_days: int | None = None,
                 origin: str | None = None) -> list[QueryRow]:
    """The study's queries, filterable by site, subject, state, age and origin."""
    ctx.require(Action.VIEW)
    now = ctx.now()
    protocol = ctx.study.protocol
    with ctx.study.db.reading() as s:
        q = (select(Query.id, Query.subject_id, Subject.screening_number, Site.code,
                    Visit.visit_code, FormInstance.form_id, Query.item_id, Query.row_index,
                    Query.origin, Query.state, Query.opened_at, Query.opened_by)
             .join(Subject, Query.subject_id == Subject.id)
             .join(Site, Subject.site_id == Site.id)
             .outerjoin(Visit, Query.visit_id == Visit.id)
             .outerjoin(FormInstance, Query.form_instance_id == FormInstance.id)
             .where(Subject.study_id == ctx.study.study_id)
             .order_by(Query.opened_at, Query.id))
        if site and ctx.user.site_code not in (None, site):
            ctx.require(Action.VIEW, site)  # a site-bound user asking for another site
        site = site or ctx.user.site_code
        if site:
            q = q.where(Site.code == site)
        if subject_id is not None:
            q = q.where(Query.subject_id == subject_id)
        if state:
            q = q.where(Query.state == state)
        if origin:
            q = q.where(Query.origin == origin)
        if min_age_days is not None:
            q = q.where(Query.opened_at <= now - timedelta(days=min_age_days))
        found = s.execute(q).all()
        ids = [r[0] for r in found]
        last: dict[int, str] = {}
        for chunk in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            part = ids[chunk:chunk + 900]
            last.update(s.execute(
                select(QueryMessage.query_id, QueryMessage.text)
                .where(QueryMessage.id.in_(select(func.max(QueryMessage.id))
                                           .where(QueryMessage.query_id.in_(part))
                                           .group_by(QueryMessage.query_id)))).all())
        names = {v.code: v.name for v in protocol.visits}
        rows = [QueryRow(qid, sid, number, site_code, names.get(visit_code or "", ""),
                         form_id or "", item_id, row, origin_, state_, opened_at, opened_by,
                         (now - opened_at).days, last.get(qid, ""))
                for (qid, sid, number, site_code, visit_code, form_id, item_id, row, origin_,
                     state_, opened_at, opened_by) in found]
        return rows


def query_thread(ctx: UserContext, query_id: int) -> list[QueryMessageRow]:
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        q = s.get(Query, query_id)
        subj = s.get(Subject, q.subject_id) if q is not None else None
        if q is None or subj is None or subj.study_id != ctx.study.study_id:
            raise NotFound(f"query {query_id} does not exist")
        ctx.require(Action.VIEW, subj.site.code)
        return [QueryMessageRow(m.at, m.by, m.kind, m.text) for m in q.messages]
