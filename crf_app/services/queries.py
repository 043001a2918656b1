"""Queries (discrepancies): automatic ones from soft edit checks; the thread of messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from crf_app.storage.audit import AuditWriter
from crf_app.storage.models import FormInstance, Query, QueryMessage, Subject, Visit

if TYPE_CHECKING:
    from crf_app.domain.forms import FormDef, FormResult
    from crf_app.services.context import UserContext

SYSTEM_USER = "system (edit check)"


def sync_auto_queries(s: Session, audit: AuditWriter, subj: Subject, visit: Visit,
                      fi: FormInstance, form: FormDef, result: FormResult,
                      ctx: UserContext) -> tuple[list[str], list[str]]:
    """Open a query for each new soft-check warning; close automatic queries no longer true.

    Returns (messages of queries opened, messages of queries closed).
    """
    now = ctx.now()
    wanted = {(w.item_id, w.row if w.row is not None else 0, w.rule): w
              for w in result.warnings}
    existing = {(q.item_id, q.row_index, q.rule): q for q in s.execute(
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
