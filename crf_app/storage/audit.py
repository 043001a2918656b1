"""The audit writer: append-only, hash-chained events written in the caller's transaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from crf_app.storage.models import AuditEvent, utcnow

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who is acting: the logged-in user (or the system for set-up steps)."""

    user_id: int | None
    username: str


SYSTEM = Actor(None, "system")


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "Y" if value else "N"
    if hasattr(value, "isoformat"):
        return value.isoformat()  # type: ignore[no-any-return]
    return str(value)


def compute_hash(prev_hash: str, ev: AuditEvent) -> str:
    """SHA-256 over the previous hash and every field of the event, canonically encoded."""
    payload = [
        prev_hash,
        ev.occurred_at.isoformat(timespec="microseconds"),
        ev.user_id,
        ev.username,
        ev.action,
        ev.entity,
        ev.entity_id,
        ev.field,
        ev.old_value,
        ev.new_value,
        ev.reason,
        ev.subject_id,
    ]
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AuditWriter:
    """Appends audit events to the session's transaction, chaining each to the one before."""

    def __init__(self, session: Session, actor: Actor, *, now: datetime | None = None):
        self.session = session
        self.actor = actor
        self.now = (now or utcnow()).astimezone(UTC)
        self._last_hash: str | None = None

    def _prev_hash(self) -> str:
        if self._last_hash is None:
            last = self.session.execute(
                select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).scalar()
            self._last_hash = last or GENESIS_HASH
        return self._last_hash

    def record(self, action: str, entity: str, entity_id: object, *, field: str = "",
               old: object = None, new: object = None, reason: str = "",
               subject_id: int | None = None) -> AuditEvent:
        """Append one event (who, when, entity, field, old, new, reason)."""
        ev = AuditEvent(
            occurred_at=self.now,
            user_id=self.actor.user_id,
            username=self.actor.username,
            action=action,
            entity=entity,
            entity_id=str(entity_id),
            field=field,
            old_value=_text(old),
            new_value=_text(new),
            reason=reason,
            subject_id=subject_id,
        )
        ev.prev_hash = self._prev_hash()
        ev.hash = compute_hash(ev.prev_hash, ev)
        self._last_hash = ev.hash
        self.session.add(ev)
        return ev

    def record_fields(self, action: str, entity: str, entity_id: object,
                      changes: dict[str, tuple[object, object]], *, reason: str = "",
                      subject_id: int | None = None) -> None:
        """One event per changed field; fields whose old and new text agree are skipped."""
        for field, (old, new) in changes.items():
            if _text(old) != _text(new):
                self.record(action, entity, entity_id, field=field, old=old, new=new,
                            reason=reason, subject_id=subject_id)


@dataclass(frozen=True)
class ChainBreak:
    """The first audit event whose hash chain does not verify."""

    event_id: int
    problem: str


def verify_chain(session: Session, batch: int = 5000) -> tuple[int, ChainBreak | None]:
    """Walk the audit chain in order; return (events checked, first break or None)."""
    expected_prev = GENESIS_HASH
    checked = 0
    last_id = 0
    for ev in _stream(session, batch):
        if ev.id <= last_id:
            return checked, ChainBreak(ev.id, "events out of order")
        last_id = ev.id
        if ev.prev_hash != expected_prev:
            return checked, ChainBreak(
                ev.id, "its previous-hash does not match the event before it "
                       "(an event was removed or inserted)")
        if compute_hash(ev.prev_hash, ev) != ev.hash:
            return checked, ChainBreak(ev.id, "its content does not match its hash "
                                              "(the event was altered)")
        expected_prev = ev.hash
        checked += 1
    return checked, None


def _stream(session: Session, batch: int) -> Iterator[AuditEvent]:
    last = 0
    while True:
        rows = session.execute(select(AuditEvent).where(AuditEvent.id > last)
                               .order_by(AuditEvent.id).limit(batch)).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id
        session.expunge_all()
