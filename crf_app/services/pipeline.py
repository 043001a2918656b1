"""One door: the write pipeline every change to study data goes through.

A write action is a service function registered with `@write_action(name, permission)`; its
body opens `with write(ctx, name) as w:` and, for every subject, visit or form it is about to
change, calls `w.authorise(...)` first. The pipeline then does, in one transaction:

1. **who**: the caller's role must allow the action's permission (checked before anything is
   read), and for each entity touched the caller's site must be the entity's site;
2. **locks**: a change to data under an active form, subject or site lock is refused with a
   message naming the lock (actions that change no study data, e.g. queries, skip this);
3. the action validates through `domain` and writes rows and audit events (`w.audit`);
4. it reports what content it changed (`w.changed(...)`), and on leaving the block the
   pipeline **voids exactly the verifications and signatures that cover it**, by the one rule
   in `crf_app.domain.coverage`, audited;
5. the transaction commits, and a `Changes` value (what changed, what was voided) is given to
   every listener registered on the study (`listen(study, callback)`: the views that must
   redraw) and kept as `w.changes`.

`WRITE_ACTIONS` lists every registered action, so a test can walk them all. The ODM merge,
which writes through its own bulk audit writer, uses the same `lock_on` and `void_covered`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from crf_app.domain.coverage import Content, ContentChange, Cover, covered_by_any
from crf_app.domain.errors import LockedData
from crf_app.domain.roles import Action
from crf_app.services.context import StudyHandle, UserContext
from crf_app.storage.audit import AuditWriter
from crf_app.storage.signoff_models import Lock, Signature, Verification

F = TypeVar("F", bound=Callable[..., Any])


# --- the registry -----------------------------------------------------------------------------
@dataclass(frozen=True)
class WriteAction:
    """A registered write action: its name, the permission it needs, and whether it changes
    study data (and so is refused under a lock)."""

    name: str
    permission: Action
    changes_data: bool
    function: str  # module.qualname, for messages and the docs


WRITE_ACTIONS: dict[str, WriteAction] = {}


def write_action(name: str, permission: Action, *, changes_data: bool = True
                 ) -> Callable[[F], F]:
    """Register a service function as the write action `name`."""

    def register(fn: F) -> F:
        if name in WRITE_ACTIONS:
            raise RuntimeError(f"write action {name!r} registered twice")
        WRITE_ACTIONS[name] = WriteAction(name, permission, changes_data,
                                          f"{fn.__module__}.{fn.__qualname__}")
        fn.write_action = name  # type: ignore[attr-defined]
        return fn

    return register


# --- what a write returns ---------------------------------------------------------------------
@dataclass
class Changes:
    """What one write changed, for the views that show it (Anki's OpChanges)."""

    action: str
    subject_ids: set[int] = field(default_factory=set)
    content: set[ContentChange] = field(default_factory=set)
    entities: set[str] = field(default_factory=set)  # "query", "lock", "signature", …
    voided: list[str] = field(default_factory=list)  # human-readable: what was undone

    def touches(self, subject_id: int) -> bool:
        return subject_id in self.subject_ids


Listener = Callable[[Changes], None]


def listen(study: StudyHandle, callback: Listener) -> Callable[[], None]:
    """Call `callback(changes)` after every committed write on `study`; returns a function
    that stops listening."""
    listeners: list[Listener] = study.__dict__.setdefault("_write_listeners", [])
    listeners.append(callback)
    return lambda: listeners.remove(callback) if callback in listeners else None


# --- locks ------------------------------------------------------------------------------------
_ACTIVE_LOCKS = (select(Lock).where(Lock.unlocked_at.is_(None), or_(
    (Lock.scope == "subject") & (Lock.target_id == bindparam("subject")),
    (Lock.scope == "site") & (Lock.target_id == bindparam("site")),
    (Lock.scope == "form") & (Lock.target_id == bindparam("form"))))
    .order_by(Lock.id))

_LOCK_SUBJECT = {"form": "This form", "subject": "This subject", "site": "This site"}


def lock_on(s: Session, *, site_id: int, subject_id: int | None = None,
            form_instance_id: int | None = None) -> Lock | None:
    """The active lock (form first, then subject, then site) over the data named, or None.
    One SELECT; a form not saved yet has no id and so no form lock."""
    locks = s.execute(_ACTIVE_LOCKS, {"subject": -1 if subject_id is None else subject_id,
                                      "site": site_id,
                                      "form": -1 if form_instance_id is None
                                      else form_instance_id}).scalars().all()
    for scope in ("form", "subject", "site"):
        for lk in locks:
            if lk.scope == scope:
                return lk
    return None


def lock_message(lock: Lock) -> str:
    """The refusal for a change under `lock`, naming it."""
    return (f"{_LOCK_SUBJECT[lock.scope]} is locked (lock #{lock.id} by {lock.locked_by}: "
            f"{lock.reason}); it cannot be changed until a data manager unlocks it")


def check_not_locked(s: Session, *, site_id: int, subject_id: int | None = None,
                     form_instance_id: int | None = None) -> None:
    """Refuse (LockedData) a change to locked data."""
    lock = lock_on(s, site_id=site_id, subject_id=subject_id,
                   form_instance_id=form_instance_id)
    if lock is not None:
        raise LockedData(lock_message(lock))


# --- voiding what a change covers -------------------------------------------------------------
class Recorder(Protocol):
    def record(self, action: str, entity: str, entity_id: object, *, field: str = "",
               old: Any = None, new: Any = None, reason: str = "",
               subject_id: int | None = None) -> Any: ...


def void_covered(s: Session, audit: Recorder, changes: set[ContentChange] | list[ContentChange],
                 now: datetime, *, why: str = "data changed",
                 skip_verifications_of: set[int] = frozenset()) -> list[str]:
    """Clear the verifications and invalidate the signatures that cover any of `changes`
    (the rule: `crf_app.domain.coverage.covers`), audited; returns what was undone.

    `skip_verifications_of`: form instances created in this transaction (nothing can have
    verified them yet, so no SELECT is spent on them)."""
    by_subject: dict[int, list[ContentChange]] = {}
    for c in changes:
        by_subject.setdefault(c.subject_id, []).append(c)
    undone: list[str] = []
    for subject_id, subject_changes in by_subject.items():
        forms = {c.form_instance_id for c in subject_changes if c.kind is Content.FORM
                 and c.form_instance_id is not None} - set(skip_verifications_of)
        if forms:
            for v in s.execute(select(Verification).where(
                    Verification.form_instance_id.in_(sorted(forms)),
                    Verification.cleared_at.is_(None))).scalars():
                if not covered_by_any(Cover("verification", subject_id, None,
                                            v.form_instance_id), subject_changes):
                    continue
                v.cleared_at, v.cleared_reason = now, f"{why} after verification"
                audit.record("update", "verification", v.id, field="state", old="verified",
                             new="cleared", reason=f"{why} after verification",
                             subject_id=subject_id)
                undone.append("source data verification removed")
        for sig in s.execute(select(Signature).where(
                Signature.subject_id == subject_id, Signature.state == "valid")).scalars():
            cover = Cover(sig.scope, subject_id, sig.visit_id, sig.form_instance_id)
            if not covered_by_any(cover, subject_changes):
                continue
            sig.state, sig.invalidated_at = "invalidated", now
            sig.invalidated_reason = f"signed {why}"
            audit.record("update", "signature", sig.id, field="state", old="valid",
                         new="invalidated", reason=f"signed {why}", subject_id=subject_id)
            undone.append(f"{sig.scope} signature of {sig.printed_name} invalidated")
    return undone


# --- the pipeline -----------------------------------------------------------------------------
class Write:
    """One write in progress: its session, audit writer and what it has changed so far."""

    def __init__(self, ctx: UserContext, s: Session, action: WriteAction):
        self.ctx, self.session, self.action = ctx, s, action
        self.audit = AuditWriter(s, ctx.user.actor, now=ctx.now())
        self.changes = Changes(action.name)
        self._new_forms: set[int] = set()
        self._settled: set[ContentChange] = set()  # changes whose coverage is voided already

    @property
    def now(self) -> datetime:
        return self.audit.now

    def authorise(self, site_code: str, *, site_id: int | None = None,
                  subject_id: int | None = None, form_instance_id: int | None = None) -> None:
        """May the caller do this action on this entity? Role at the entity's site, then (for
        actions that change study data) no active lock on the site, subject or form."""
        self.ctx.require(self.action.permission, site_code)
        if subject_id is not None:
            self.changes.subject_ids.add(subject_id)
        if self.action.changes_data and site_id is not None:
            check_not_locked(self.session, site_id=site_id, subject_id=subject_id,
                             form_instance_id=form_instance_id)

    def authorise_subject(self, subj: Any, *, form_instance_id: int | None = None) -> None:
        """`authorise` for a Subject row (its site, its id, optionally one of its forms)."""
        self.authorise(subj.site.code, site_id=subj.site_id, subject_id=subj.id,
                       form_instance_id=form_instance_id)

    def new_form(self, form_instance_id: int) -> None:
        """A form instance created in this write (nothing can have verified it yet)."""
        self._new_forms.add(form_instance_id)

    def changed(self, kind: Content, subject_id: int, *, visit_id: int | None = None,
                form_instance_id: int | None = None) -> None:
        """Report a change to content that signatures or verifications may cover."""
        self.changes.subject_ids.add(subject_id)
        self.changes.content.add(ContentChange(kind, subject_id, visit_id, form_instance_id))

    def touched(self, entity: str) -> None:
        """Report a change to something that is not signed content (a query, a lock…)."""
        self.changes.entities.add(entity)

    def finish(self) -> None:
        """Void what the changes reported so far cover (the pipeline calls it on leaving the
        block; an action may call it earlier to report what was undone)."""
        todo = self.changes.content - self._settled
        if todo:
            self.changes.voided.extend(void_covered(
                self.session, self.audit, todo, self.now,
                skip_verifications_of=self._new_forms))
            self._settled |= todo


@contextmanager
def write(ctx: UserContext, name: str) -> Iterator[Write]:
    """Run the body as the registered write action `name`, in one transaction."""
    action = WRITE_ACTIONS[name]
    ctx.require(action.permission)
    with ctx.study.db.transaction() as s:
        w = Write(ctx, s, action)
        yield w
        w.finish()
        s.flush()
    for callback in list(ctx.study.__dict__.get("_write_listeners", ())):
        callback(w.changes)
