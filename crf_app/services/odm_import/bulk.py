"""Writing thousands of rows at once: audit events (the hash chain computed as the audit writer
does), the values of new forms and new log rows.

An import writes some 500 rows per subject. SQLAlchemy's executemany spends more time on each
row's parameters (processing, compiling) than SQLite spends storing it, so these inserts go to
the DBAPI's executemany directly, each value converted once by its column's own bind processor
(exactly what SQLAlchemy would send).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from crf_app.storage.audit import GENESIS_HASH, Actor, compute_hash
from crf_app.storage.models import AuditEvent, ItemValue

AUDIT_COLUMNS = ("occurred_at", "user_id", "username", "action", "entity", "entity_id",
                 "field", "old_value", "new_value", "reason", "subject_id", "prev_hash", "hash")


class RawInsert:
    """INSERT INTO `table` (`columns`) run with the DBAPI's executemany."""

    def __init__(self, s: Session, table: Table, columns: Sequence[str]):
        self.s, self.columns = s, list(columns)
        dialect = s.get_bind().dialect
        compiled = table.insert().compile(dialect=dialect, column_keys=self.columns)
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        self.names = list(compiled.positiontup or []) if self.positional else self.columns
        assert sorted(self.names) == sorted(self.columns), (self.names, self.columns)
        self.order = [self.columns.index(name) for name in self.names]
        self.identity = self.order == list(range(len(self.order)))
        processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                      for name in self.names]
        # a value's conversion is remembered: the events of one save share their timestamp
        self.processors = [(k, p, {}) for k, p in enumerate(processors) if p is not None]

    def run(self, rows: list[tuple]) -> None:
        """Insert `rows` (tuples in the order of `columns`)."""
        if not rows:
            return
        order, processors, names = self.order, self.processors, self.names
        params: list[Any] = []
        identity = self.identity
        for row in rows:
            values = list(row) if identity else [row[i] for i in order]
            for k, process, known in processors:
                value = values[k]
                converted = known.get(value, _UNSEEN)
                if converted is _UNSEEN:
                    converted = process(value)
                    if len(known) < 4096:
                        known[value] = converted
                values[k] = converted
            params.append(tuple(values) if self.positional else dict(zip(names, values,
                                                                         strict=True)))
        self.s.connection().exec_driver_sql(self.sql, params)


class RawSelect:
    """A SELECT compiled once for the session's dialect, run through the DBAPI (the ids of
    rows just inserted: plain integers and codes, nothing to convert)."""

    def __init__(self, s: Session, stmt: Any):
        self.s = s
        compiled = stmt.compile(dialect=s.get_bind().dialect)
        self.sql = str(compiled)
        self.names = list(compiled.positiontup or []) if compiled.positional else None

    def rows(self, **params: Any) -> list[Any]:
        args = tuple(params[n] for n in self.names) if self.names is not None else params
        return self.s.connection().exec_driver_sql(self.sql, args).fetchall()


_UNSEEN = object()


def _encoder() -> Any:
    """json.dumps(…, ensure_ascii=False, separators=(",", ":")) of a flat list, with the C
    encoder built once instead of on every call (checked against compute_hash at start)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    encode = make(None, None, json.encoder.encode_basestring, None, ":", ",", False, False,
                  True)
    return lambda values: "".join(encode(values, 0))


_ENCODE = _encoder()


def _digest(prev: str, row: tuple, stamp: str) -> str:
    """compute_hash of an audit row (tuple in AUDIT_COLUMNS order, `stamp` its time in ISO
    8601 with microseconds), without an object."""
    return hashlib.sha256(_ENCODE([prev, stamp, *row[1:11]]).encode("utf-8")).hexdigest()


def _same_as_compute_hash() -> bool:
    """The fast digest is only used while it gives compute_hash's very hashes."""
    row = (datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), 7, "ünï", "update", "item", "S/V/F/I",
           "I", None, "1,5 \"q\"\n", "why", 3)
    sample = SimpleNamespace(**dict(zip(AUDIT_COLUMNS, row, strict=False)))
    return _digest(GENESIS_HASH, row, row[0].isoformat(timespec="microseconds")) == \
        compute_hash(GENESIS_HASH, sample)  # type: ignore[arg-type]


class BulkAudit:
    """The audit writer's hash chain, inserted in bulk (an import records thousands of events).

    Same events and hashes as crf_app.storage.audit.AuditWriter (the hash is compute_hash's,
    checked at start); `flush()` inserts them in chain order, before anything else writes to
    the trail.
    """

    def __init__(self, s: Session, actor: Actor, now: datetime):
        self.s, self.actor, self.now = s, actor, now.astimezone(UTC)
        self.pending: list[tuple] = []
        self.last: str | None = None
        self.fast = _same_as_compute_hash()
        self._insert: RawInsert | None = None
        self._stamps: dict[datetime, str] = {}

    def record(self, action: str, entity: str, entity_id: object, *, field: str = "",
               old: str | None = None, new: str | None = None, reason: str = "",
               subject_id: int | None = None, at: datetime | None = None,
               actor: Actor | None = None) -> str:
        """Append one event; returns its hash."""
        who = actor or self.actor
        return self.add((self.now if at is None else at, who.user_id, who.username, action,
                         entity, str(entity_id), field, old, new, reason, subject_id))

    def add(self, row: tuple) -> str:
        """Append one event given as (occurred_at, user_id, username, action, entity,
        entity_id, field, old, new, reason, subject_id); returns its hash."""
        if self.last is None:
            self.s.flush()
            self.last = self.s.execute(select(AuditEvent.hash).order_by(AuditEvent.id.desc())
                                       .limit(1)).scalar() or GENESIS_HASH
        prev = self.last
        at = row[0]
        if at.tzinfo is not UTC:
            at = at.astimezone(UTC)
            row = (at, *row[1:])
        if self.fast:
            stamp = self._stamps.get(at)
            if stamp is None:
                if len(self._stamps) > 4096:
                    self._stamps.clear()
                stamp = self._stamps[at] = at.isoformat(timespec="microseconds")
            digest = _digest(prev, row, stamp)
        else:
            digest = compute_hash(prev, SimpleNamespace(  # type: ignore[arg-type]
                **dict(zip(AUDIT_COLUMNS, row, strict=False))))
        self.pending.append((*row, prev, digest))
        self.last = digest
        return digest

    def flush(self) -> None:
        if self.pending:
            if self._insert is None:
                self._insert = RawInsert(self.s, AuditEvent.__table__, AUDIT_COLUMNS)
            self._insert.run(self.pending)
            self.pending.clear()


class ValueInserts:
    """Item values of new forms, inserted in one executemany."""

    def __init__(self, s: Session):
        self.insert = RawInsert(s, ItemValue.__table__,
                                ("form_instance_id", "item_id", "row_index", "value"))

    def run(self, rows: list[tuple]) -> None:
        self.insert.run(rows)
