"""Merging one value: its incoming audited history against the local one.

A value changed only on the other side since the last exchange is applied with its history
(audit events keep the original user and time, with the reason "imported from <FileOID>"); a
value changed on both sides becomes a MergeConflict that a data manager resolves; nothing is
ever overwritten. A value new here (a new subject, form or log row) has its whole history
recorded directly (`new_history`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from crf_app import odm as oe
from crf_app.services.odm_import.targets import LocalEvent, Target
from crf_app.storage.audit import Actor
from crf_app.storage.interchange_models import MergeConflict
from crf_app.storage.models import Subject

if TYPE_CHECKING:
    from crf_app.services.odm_import.merge import Merger


class HistoryMerger:
    """The part of `Merger` that merges one value (forms, records and logs all use it)."""

    # -- audit helpers --
    def _record(self: Merger, t: Target, old: str | None, new: str | None, *, at: datetime | None,
                user: str | None, reason: str, subject_id: int,
                action: str | None = None) -> None:
        if reason:
            why = f"{self._imported}: {reason}"
        else:
            why = self._imported if at is not None else self._unaudited
        original = user is not None and at is not None
        self.audit.record(action or ("create" if old is None else "update"), t.entity,
                          t.entity_id, field=t.field, old=old, new=new, reason=why,
                          subject_id=subject_id, at=at if original else None,
                          actor=self.actor_of(user) if original else None)
        self.report.events_recorded += 1

    def actor_of(self: Merger, username: str | None) -> Actor:
        """The original author of an imported change (no user id: not an account here)."""
        actor = self._actors.get(username or "")
        if actor is None:
            actor = self._actors[username or ""] = Actor(None, username or "")
        return actor

    def new_history(self: Merger, entity: str, entity_id: str, field: str, cell: oe.Cell,
                    subject_id: int, initial: str | None = None) -> str:
        """Record the whole history of a value new here (what merge_cell does for it, without
        a target: the caller stores the value); returns 'applied' or 'unchanged'."""
        add, prev, audited, now = self.audit.add, initial, 0, self.audit.now
        importer, imported = self.actor, self._imported
        for at, user, new, reason, _ in cell.history:
            if at is None:
                continue
            audited += 1
            why = f"{imported}: {reason}" if reason else imported
            action = "create" if prev is None else "update"
            if user is not None:  # the original author and time
                add((at, None, user, action, entity, entity_id, field, prev, new, why,
                     subject_id))
            else:  # a time without a user: recorded as the importer's
                add((now, importer.user_id, importer.username, action, entity, entity_id, field,
                     prev, new, why, subject_id))
            prev = new
        self.report.events_recorded += audited
        final = cell.value
        if final != prev:  # unaudited: a placeholder, or a tail without an audit record
            reason = cell.history[-1].reason if cell.history and not audited else ""
            add((now, importer.user_id, importer.username,
                 "create" if prev is None else "update", entity, entity_id, field, prev, final,
                 f"{imported}: {reason}" if reason else self._unaudited, subject_id))
            self.report.events_recorded += 1
        return "applied" if audited or final != initial else "unchanged"

    # -- the merge of one value --
    def merge_cell(self: Merger, t: Target, cell: oe.Cell, local: list[LocalEvent],
                   open_conflicts: list[MergeConflict], subject: Subject, *, fresh: bool,
                   initial: str | None = None) -> str:
        """`_merge_cell`, remembering each value of a stored subject that the merge changes
        or contests (for the lock check and the signatures and verifications it voids)."""
        outcome = self._merge_cell(t, cell, local, open_conflicts, subject, fresh=fresh,
                                   initial=initial)
        if not fresh and outcome in ("applied", "conflict"):
            self.touched_targets.append(t)
        return outcome

    def _merge_cell(self: Merger, t: Target, cell: oe.Cell, local: list[LocalEvent],
                    open_conflicts: list[MergeConflict], subject: Subject, *, fresh: bool,
                    initial: str | None = None) -> str:
        """Bring one value up to date; returns 'unchanged', 'applied', 'conflict' or 'kept'.

        The incoming history is matched with the local one by (time, user, new value). After
        the last change both know, if only the incoming side changed the value, its changes
        are applied (fast-forward) and recorded; if both did and they disagree, the local
        value stays and a MergeConflict is opened. A value the other side never changed
        under audit (a default, a placeholder) only fills a value that is empty here.
        """
        if fresh and not local:
            outcome = self.new_history(t.entity, t.entity_id, t.field, cell, subject.id,
                                       initial)
            t.apply(cell.value)
            return outcome
        audited = [c for c in cell.history if c.at is not None]
        final = cell.value
        current = t.current()
        if not audited:
            if final == current:
                return "unchanged"
            if current is None and not local:
                reason = cell.history[-1].reason if cell.history else ""
                self._record(t, None, final, at=None, user=None, reason=reason,
                             subject_id=subject.id)
                t.apply(final)
                return "applied"
            if local:
                return "kept"  # only this side changed it under audit
            return self._conflict(t, cell, None, current, local, open_conflicts, subject)
        in_keys = {c.key for c in audited}
        lpos = {e.key: i for i, e in enumerate(local)}
        ci, cl = -1, -1
        for i, ch in enumerate(audited):
            if ch.key in lpos:
                ci, cl = i, lpos[ch.key]
        new_in = audited[ci + 1:]
        if not new_in:
            return "unchanged"
        local_after = [e for e in local[cl + 1:] if e.key not in in_keys]
        if not local_after:
            prev = audited[ci].new if ci >= 0 else (initial if fresh else current)
            for ch in new_in:
                self._record(t, prev, ch.new, at=ch.at, user=ch.user, reason=ch.reason,
                             subject_id=subject.id)
                prev = ch.new
            if final != prev:  # an unaudited tail in the file
                self._record(t, prev, final, at=None, user=None, reason="",
                             subject_id=subject.id)
            t.apply(final)
            return "applied" if final != current or fresh else "unchanged"
        if final == current:
            return "unchanged"
        return self._conflict(t, cell, new_in[-1], current, local, open_conflicts, subject)

    def _conflict(self: Merger, t: Target, cell: oe.Cell, incoming: oe.Change | None,
                  current: str | None, local: list[LocalEvent],
                  open_conflicts: list[MergeConflict], subject: Subject) -> str:
        inc_at = incoming.at if incoming else None
        inc_user = incoming.user if incoming else None
        for c in open_conflicts:
            if (c.entity, c.entity_id, c.field) != (t.entity, t.entity_id, t.field):
                continue
            if (c.incoming_at, c.incoming_user, c.incoming_value) == (inc_at, inc_user,
                                                                      cell.value):
                return "conflict"  # already waiting for a data manager
            c.state = "superseded"
        last = local[-1] if local else None
        conflict = MergeConflict(
            subject_id=subject.id, visit_id=t.visit_id, form_instance_id=t.form_instance_id,
            entity=t.entity, entity_id=t.entity_id, field=t.field, row_index=t.row,
            local_value=current, local_user=last.user if last else None,
            local_at=last.at if last else None, incoming_value=cell.value,
            incoming_user=inc_user, incoming_at=inc_at,
            incoming_reason=incoming.reason if incoming else "", file_oid=self.file_oid,
            state="open", created_at=self.now)
        self.s.add(conflict)
        self.s.flush()
        open_conflicts.append(conflict)
        self.audit.record("create", "merge_conflict", conflict.id, field=t.field,
                          old=current, new=cell.value,
                          reason=f"{t.entity_id}: changed here and in {self.file_oid}; the "
                                 "local value is kept until a data manager resolves it",
                          subject_id=subject.id)
        self.report.events_recorded += 1
        self.report.conflicts.append(f"{t.entity_id}" + (f" {t.field}" if t.entity != "item"
                                                         else "")
                                     + f": here {current!r}, in the file {cell.value!r}")
        return "conflict"
