"""The audit writer: append-only, hash-chained events written in the caller's transaction."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from crf_app.domain.values import value_text, value_text_or_none
from crf_app.storage.models import AuditEvent, utcnow

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who is acting: the logged-in user (or the system for set-up steps)."""

    user_id: int | None
    username: str


SYSTEM = Actor(None, "system")


_text = value_text  # the text form of a value (crf_app.domain.values)


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

    # the canonical encoding of compute_hash (json.dumps with these options), built once
    _ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    _LAST_HASH = select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)

    def __init__(self, session: Session, actor: Actor, *, now: datetime | None = None):
        self.session = session
        self.actor = actor
        self.now = (now or utcnow()).astimezone(UTC)
        self._last_hash: str | None = None
        self._orm_pending = False  # events added as ORM objects, maybe not flushed yet

    def _prev_hash(self) -> str:
        if self._last_hash is None:
            last = self.session.execute(self._LAST_HASH).scalar()
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
        self._orm_pending = True
        return ev

    def record_many(self, events: Iterable[tuple[str, str, object, str, object, object, str]],
                    *, subject_id: int | None = None) -> int:
        """Append events given as (action, entity, entity_id, field, old, new, reason), all of
        one subject, with a single INSERT: the same rows, hashes and chain order as calling
        `record` for each in turn, without an ORM object per event. Returns how many."""
        events = list(events)
        if not events:
            return 0
        if self._orm_pending:  # this writer's earlier events come first in the chain
            self.session.flush()
            self._orm_pending = False
        prev = self._prev_hash()
        now, user_id, username = self.now, self.actor.user_id, self.actor.username
        at = now.isoformat(timespec="microseconds")
        encode = self._ENCODER.encode
        rows = []
        for action, entity, entity_id, field, old, new, reason in events:
            entity_id, old, new = str(entity_id), _text(old), _text(new)
            digest = hashlib.sha256(encode([
                prev, at, user_id, username, action, entity, entity_id, field, old, new, reason,
                subject_id]).encode("utf-8")).hexdigest()
            rows.append({"occurred_at": now, "user_id": user_id, "username": username,
                         "action": action, "entity": entity, "entity_id": entity_id,
                         "field": field, "old_value": old, "new_value": new, "reason": reason,
                         "subject_id": subject_id, "prev_hash": prev, "hash": digest})
            prev = digest
        self.session.execute(insert(AuditEvent.__table__), rows)
        self._last_hash = prev
        return len(rows)

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
    walk = walk_chain(session, batch, limit=1)
    return walk.checked, (walk.breaks[0] if walk.breaks else None)


# --- replay helpers (crf_app.integrity.replay replays the trail against the data) -------------
audit_text = value_text_or_none  # '' and None both mean "no value"


@dataclass
class ChainWalk:
    """The whole chain walked: every break found (each one named), not only the first."""

    total: int = 0  # events walked
    checked: int = 0  # events verified before the first break
    breaks: list[ChainBreak] = dataclasses.field(default_factory=list)
    broken: int = 0  # breaks found (`breaks` keeps at most `limit` of them)


def _ids(first: int, last: int) -> str:
    return f"#{first}" if first == last else f"#{first}–#{last}"


def walk_chain(session: Session, batch: int = 5000, limit: int = 100) -> ChainWalk:
    """Walk every event in id order, naming each break and carrying on after it.

    A removed event shows as a gap in the ids (named) and a previous-hash that does not match;
    an altered event as content that does not match its own hash. After a break the walk
    trusts the event's stored hash again, so one removal or one edit gives one break.
    """
    walk = ChainWalk()
    expected_prev = GENESIS_HASH
    last_id = 0

    def broke(event_id: int, problem: str) -> None:
        if not walk.broken:
            walk.checked = walk.total
        walk.broken += 1
        if len(walk.breaks) < limit:
            walk.breaks.append(ChainBreak(event_id, problem))

    for ev in _stream_rows(session, batch):
        if ev.prev_hash != expected_prev:
            if ev.id > last_id + 1:
                gone = "event" if ev.id == last_id + 2 else "events"
                broke(ev.id, f"audit {gone} {_ids(last_id + 1, ev.id - 1)} removed: the chain "
                             f"jumps from #{last_id} to #{ev.id} and its previous-hash does not "
                             "match the event before it (an event was removed or inserted)")
            else:
                broke(ev.id, "its previous-hash does not match the event before it "
                             "(an event was removed or inserted)")
        if compute_hash(ev.prev_hash, ev) != ev.hash:  # type: ignore[arg-type]
            what = f"{ev.entity} {ev.entity_id}" + (f" {ev.field}" if ev.field else "")
            broke(ev.id, f"its content does not match its hash (the event was altered): "
                         f"{ev.action} {what}, old {ev.old_value!r}, new {ev.new_value!r}, "
                         f"by {ev.username}")
        expected_prev = ev.hash
        last_id = ev.id
        walk.total += 1
    if not walk.broken:
        walk.checked = walk.total
    return walk


def _stream_rows(session: Session, batch: int) -> Iterator[Any]:
    """Audit events as light rows (typed columns, no ORM objects), in id order."""
    table = AuditEvent.__table__
    last = 0
    while True:
        rows = session.execute(select(table).where(table.c.id > last)
                               .order_by(table.c.id).limit(batch)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


# --- bulk append (crf_app.generator.study: large generated studies) --------------------------
def chain_events(prev_hash: str, events: Iterable[tuple[Any, ...]]
                 ) -> tuple[list[tuple[Any, ...]], str]:
    """Hash-chain events for a bulk INSERT, each chained to the one before, starting after
    `prev_hash`: the same stored values and hashes as `AuditWriter.record` would write for
    them in turn (`compute_hash` verifies them).

    An event is (occurred_at (timezone-aware), user_id, username, action, entity, entity_id,
    field, old, new, reason, subject_id), values as `record` takes them. Returns the rows in
    AuditEvent column order without the id (occurred_at, user_id, username, action, entity,
    entity_id, field, old_value, new_value, reason, subject_id, prev_hash, hash) and the last
    hash; the caller inserts them in this order.
    """
    encode = AuditWriter._ENCODER.encode
    sha256 = hashlib.sha256
    rows: list[tuple[Any, ...]] = []
    prev = prev_hash
    last_at: datetime | None = None
    at = ""
    for occurred_at, user_id, username, action, entity, entity_id, field, old, new, reason, \
            subject_id in events:
        if occurred_at is not last_at:  # events of one action share their timestamp
            last_at = occurred_at
            at = occurred_at.astimezone(UTC).isoformat(timespec="microseconds")
        entity_id, old, new = str(entity_id), _text(old), _text(new)
        digest = sha256(encode([prev, at, user_id, username, action, entity, entity_id, field,
                                old, new, reason, subject_id]).encode("utf-8")).hexdigest()
        rows.append((occurred_at, user_id, username, action, entity, entity_id, field, old, new,
                     reason, subject_id, prev, digest))
        prev = digest
    return rows, prev
