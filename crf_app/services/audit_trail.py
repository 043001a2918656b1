"""Reading the audit trail: history of a subject, form or item; study-wide CSV export."""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from crf_app.domain.errors import CrfError
from crf_app.domain.roles import Action
from crf_app.services.context import UserContext
from crf_app.storage.models import AuditEvent, Site, Subject

CSV_HEADER = ["event_id", "utc_time", "user", "action", "entity", "entity_id", "field", "old",
              "new", "reason", "hash"]


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    user: str
    action: str
    entity: str
    entity_id: str
    field: str
    old: str | None
    new: str | None
    reason: str


def _scoped(ctx: UserContext, q):
    """Only the events of subjects at the caller's site, for a site-bound user (study-wide
    events, e.g. logins and accounts, are not theirs to read)."""
    if not ctx.user.site_code:
        return q
    return q.where(AuditEvent.subject_id.in_(
        select(Subject.id).join(Site, Subject.site_id == Site.id)
        .where(Subject.study_id == ctx.study.study_id, Site.code == ctx.user.site_code)))


def audit_history(ctx: UserContext, *, subject_id: int | None = None,
                  entity_prefix: str | None = None, field: str | None = None,
                  user: str | None = None, text: str | None = None,
                  limit: int = 5000) -> list[AuditRow]:
    """Newest first: who, when, old → new, reason; filtered by subject, entity id prefix
    (e.g. "S01-004/SCR/vital_signs"), field (item), user and free text."""
    ctx.require(Action.VIEW_AUDIT)
    q = _scoped(ctx, select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
    if subject_id is not None:
        q = q.where(AuditEvent.subject_id == subject_id)
    if entity_prefix:
        # case-insensitive as SQLite's LIKE is (PostgreSQL's LIKE is not)
        q = q.where(AuditEvent.entity_id.istartswith(entity_prefix, autoescape=True))
    if field:
        q = q.where(AuditEvent.field == field)
    if user:
        q = q.where(AuditEvent.username == user)
    if text:
        like = f"%{text}%"
        q = q.where(AuditEvent.old_value.ilike(like) | AuditEvent.new_value.ilike(like)
                    | AuditEvent.reason.ilike(like) | AuditEvent.entity_id.ilike(like))
    with ctx.study.db.reading() as s:
        return [AuditRow(e.id, e.occurred_at, e.username, e.action, e.entity, e.entity_id,
                         e.field, e.old_value, e.new_value, e.reason)
                for e in s.execute(q).scalars()]


def export_audit_csv(ctx: UserContext, target: Path, batch: int = 5000) -> int:
    """Write the whole audit trail to CSV (streamed in batches, written to a temporary file and
    renamed, so no partial file is left); returns the number of events."""
    ctx.require(Action.VIEW_AUDIT)
    target = Path(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".audit-", suffix=".csv", dir=target.parent)
    except OSError as exc:
        raise CrfError(f"cannot write to {target.parent}: {exc.strerror}") from None
    n = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_HEADER)
            last = 0
            while True:
                with ctx.study.db.reading() as s:
                    rows = s.execute(_scoped(ctx, select(AuditEvent).where(
                        AuditEvent.id > last).order_by(AuditEvent.id).limit(batch))
                    ).scalars().all()
                if not rows:
                    break
                for e in rows:
                    w.writerow([e.id, e.occurred_at.isoformat(), e.username, e.action, e.entity,
                                e.entity_id, e.field, e.old_value or "", e.new_value or "",
                                e.reason, e.hash])
                n += len(rows)
                last = rows[-1].id
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
