"""Sign-off: source data verification, electronic signatures, locking (roles enforced here)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.orm import Session

from crf_app.domain.errors import (
    AuthenticationFailed,
    CrfError,
    FieldError,
    NotFound,
    ValidationFailed,
)
from crf_app.domain.roles import Action
from crf_app.services.context import UserContext
from crf_app.storage.audit import AuditWriter
from crf_app.storage.models import FormInstance, ItemValue, Site, Subject, Visit
from crf_app.storage.signoff_models import Lock, Signature, Verification

MEANINGS = ["Reviewed and approved", "Authored", "Verified as accurate and complete",
            "Responsible investigator sign-off"]


class LockedData(CrfError):
    """The data is locked by a data manager."""


# --- used by every writing service ------------------------------------------------------------
_ACTIVE_LOCKS = (select(Lock).where(Lock.unlocked_at.is_(None), or_(
    (Lock.scope == "subject") & (Lock.target_id == bindparam("subject")),
    (Lock.scope == "site") & (Lock.target_id == bindparam("site")),
    (Lock.scope == "form") & (Lock.target_id == bindparam("form"))))
    .order_by(Lock.id))


def check_not_locked(s: Session, fi: FormInstance | None, subj: Subject) -> None:
    """Refuse a change to a locked form, subject or site."""
    targets = [("subject", subj.id), ("site", subj.site_id)]
    if fi is not None and fi.id is not None:
        targets.append(("form", fi.id))
    # one SELECT for the three targets (a form not saved yet has no id: -1 matches no lock)
    locks = s.execute(_ACTIVE_LOCKS, {"subject": subj.id, "site": subj.site_id,
                                      "form": targets[2][1] if len(targets) > 2 else -1}
                      ).scalars().all()
    for scope, target in targets:
        lock = next((lk for lk in locks if lk.scope == scope and lk.target_id == target), None)
        if lock is not None:
            what = {"form": "This form", "subject": "This subject",
                    "site": "This site"}[scope]
            raise LockedData(f"{what} is locked (by {lock.locked_by}: {lock.reason}); it "
                             "cannot be changed until a data manager unlocks it")


_COVERING_SIGNATURES = select(Signature).where(
    Signature.subject_id == bindparam("subject"), Signature.state == "valid",
    (Signature.form_instance_id == bindparam("form")) | (Signature.visit_id == bindparam("visit"))
    | (Signature.scope == "casebook"))


def on_data_changed(s: Session, audit: AuditWriter, fi: FormInstance, subj: Subject,
                    now: datetime, *, new_form: bool = False) -> list[str]:
    """A saved change removes the form's verification and invalidates the signatures that
    cover it, visibly and audited. Returns what was undone (for the user).

    `new_form`: `fi` was created in this transaction, so nothing can verify it yet (no
    SELECT for that); a visit or casebook signature may still cover it."""
    undone = []
    verifications = [] if new_form else s.execute(select(Verification).where(
        Verification.form_instance_id == fi.id, Verification.cleared_at.is_(None))).scalars()
    for v in verifications:
        v.cleared_at, v.cleared_reason = now, "data changed after verification"
        audit.record("update", "verification", v.id, field="state", old="verified",
                     new="cleared", reason="data changed after verification",
                     subject_id=subj.id)
        undone.append("source data verification removed")
    sigs = s.execute(_COVERING_SIGNATURES, {"subject": subj.id, "form": fi.id,
                                            "visit": fi.visit_id}).scalars().all()
    for sig in sigs:
        sig.state, sig.invalidated_at = "invalidated", now
        sig.invalidated_reason = "signed data changed"
        audit.record("update", "signature", sig.id, field="state", old="valid",
                     new="invalidated", reason="signed data changed", subject_id=subj.id)
        undone.append(f"signature of {sig.printed_name} invalidated")
    return undone


# --- source data verification -----------------------------------------------------------------
def _form_instance(s: Session, ctx: UserContext, visit_id: int, form_id: str) -> FormInstance:
    fi = s.execute(select(FormInstance).where(FormInstance.visit_id == visit_id,
                                              FormInstance.form_id == form_id)
                   ).scalar_one_or_none()
    if fi is None or fi.visit.subject.study_id != ctx.study.study_id:
        raise NotFound(f"form {form_id} has not been saved for this visit")
    return fi


def verify_form(ctx: UserContext, visit_id: int, form_id: str) -> None:
    """A monitor marks a complete form as verified against the source documents."""
    with ctx.study.db.transaction() as s:
        fi = _form_instance(s, ctx, visit_id, form_id)
        subj = fi.visit.subject
        ctx.require(Action.VERIFY, subj.site.code)
        if fi.status != "complete":
            raise ValidationFailed(FieldError("status", "complete_first",
                                              "Only a complete form can be verified"))
        if _verification(s, fi.id) is not None:
            raise ValidationFailed(FieldError("status", "already_verified",
                                              "This form is already verified"))
        now = ctx.now()
        v = Verification(form_instance_id=fi.id, subject_id=subj.id, verified_at=now,
                         verified_by=ctx.user.username)
        s.add(v)
        s.flush()
        AuditWriter(s, ctx.user.actor, now=now).record(
            "create", "verification", v.id, field="state", new="verified",
            reason=f"{subj.screening_number}/{fi.visit.visit_code}/{fi.form_id}",
            subject_id=subj.id)


def _verification(s: Session, fi_id: int) -> Verification | None:
    return s.execute(select(Verification).where(Verification.form_instance_id == fi_id,
                                                Verification.cleared_at.is_(None))
                     ).scalars().first()


@dataclass(frozen=True)
class SdvProgress:
    site: str
    subject: str
    complete_forms: int
    verified_forms: int

    @property
    def percent(self) -> float:
        return 100.0 * self.verified_forms / self.complete_forms if self.complete_forms else 0.0


def sdv_progress(ctx: UserContext) -> list[SdvProgress]:
    """Per subject: complete forms and how many of them are verified."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        verified = (select(Verification.form_instance_id)
                    .where(Verification.cleared_at.is_(None)).subquery())
        rows = s.execute(
            select(Site.code, Subject.screening_number, func.count(FormInstance.id),
                   func.count(verified.c.form_instance_id))
            .select_from(FormInstance).join(Visit).join(Subject).join(Site)
            .outerjoin(verified, verified.c.form_instance_id == FormInstance.id)
            .where(FormInstance.status == "complete", Subject.study_id == ctx.study.study_id)
            .group_by(Site.code, Subject.screening_number)
            .order_by(Site.code, Subject.screening_number)).all()
    return [SdvProgress(*r) for r in rows]


# --- electronic signatures --------------------------------------------------------------------
def signed_values_hash(s: Session, subject_id: int, form_ids: list[int]) -> str:
    """SHA-256 over the canonical JSON of every value of the signed forms."""
    rows = s.execute(select(FormInstance.id, FormInstance.form_id, FormInstance.form_version,
                            ItemValue.item_id, ItemValue.row_index, ItemValue.value)
                     .join(ItemValue, isouter=True)
                     .where(FormInstance.id.in_(form_ids))
                     .order_by(FormInstance.id, ItemValue.item_id, ItemValue.row_index)).all()
    # item ids in code-point order (SQLite's BINARY), whatever a server's collation sorts by
    rows.sort(key=lambda r: (r[0], r[3] or "", r[4] or 0))
    blob = json.dumps([subject_id, [list(r) for r in rows]], separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def sign(ctx: UserContext, subject_id: int, *, scope: str, password: str, meaning: str,
         visit_id: int | None = None, form_id: str | None = None) -> int:
    """An investigator signs a form, a visit or the whole casebook by entering their password
    again and choosing the meaning; returns the signature id."""
    if scope not in ("form", "visit", "casebook"):
        raise ValidationFailed(FieldError("scope", "codelist",
                                          "Sign a form, a visit or a casebook"))
    if not meaning.strip():
        raise ValidationFailed(FieldError("meaning", "required",
                                          "The meaning of the signature is required"))
    with ctx.study.db.transaction() as s:
        subj = s.get(Subject, subject_id)
        if subj is None or subj.study_id != ctx.study.study_id:
            raise NotFound(f"subject {subject_id} does not exist")
        ctx.require(Action.SIGN, subj.site.code)
        q = select(FormInstance).join(Visit).where(Visit.subject_id == subject_id,
                                                   FormInstance.status == "complete")
        if scope in ("form", "visit"):
            q = q.where(Visit.id == visit_id)
        if scope == "form":
            q = q.where(FormInstance.form_id == form_id)
        forms = s.execute(q).scalars().all()
        if not forms:
            raise ValidationFailed(FieldError("scope", "nothing_to_sign",
                                              "There is no complete form to sign here"))
    # re-authentication outside the signing transaction: a wrong password is a failed login
    _reauthenticate(ctx, password)
    with ctx.study.db.transaction() as s:
        subj = s.get(Subject, subject_id)
        forms = s.execute(q).scalars().all()
        now = ctx.now()
        sig = Signature(subject_id=subj.id, scope=scope,
                        visit_id=visit_id if scope != "casebook" else None,
                        form_instance_id=forms[0].id if scope == "form" else None,
                        user_id=ctx.user.id, username=ctx.user.username,
                        printed_name=ctx.user.full_name, meaning=meaning.strip(),
                        signed_at=now, values_hash=signed_values_hash(
                            s, subj.id, [f.id for f in forms]),
                        forms_signed=len(forms), state="valid")
        s.add(sig)
        s.flush()
        AuditWriter(s, ctx.user.actor, now=now).record(
            "create", "signature", sig.id, field="meaning", new=sig.meaning,
            reason=f"{scope} of {subj.screening_number}: {len(forms)} forms, "
                   f"sha256 {sig.values_hash[:16]}…", subject_id=subj.id)
        return sig.id


def _reauthenticate(ctx: UserContext, password: str) -> None:
    from crf_app.services.accounts import login

    try:
        login(ctx.study, ctx.user.username, password)
    except AuthenticationFailed:
        raise AuthenticationFailed("Signature refused: wrong password (the attempt is "
                                   "recorded)") from None


@dataclass(frozen=True)
class SignatureRow:
    id: int
    scope: str
    visit: str
    form_id: str
    printed_name: str
    username: str
    meaning: str
    signed_at: datetime
    values_hash: str
    forms_signed: int
    state: str
    invalidated_reason: str


def signature_manifest(ctx: UserContext, subject_id: int) -> list[SignatureRow]:
    """Every signature of a subject, valid or invalidated (for screens and printouts)."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        rows = s.execute(select(Signature, Visit.visit_code, FormInstance.form_id)
                         .outerjoin(Visit, Signature.visit_id == Visit.id)
                         .outerjoin(FormInstance,
                                    Signature.form_instance_id == FormInstance.id)
                         .where(Signature.subject_id == subject_id)
                         .order_by(Signature.id)).all()
        return [SignatureRow(g.id, g.scope, code or "", form or "", g.printed_name, g.username,
                             g.meaning, g.signed_at, g.values_hash, g.forms_signed, g.state,
                             g.invalidated_reason) for g, code, form in rows]


# --- locking ----------------------------------------------------------------------------------
def lock(ctx: UserContext, scope: str, target_id: int, reason: str) -> int:
    """A data manager locks a form instance, a subject or a site."""
    ctx.require(Action.LOCK)
    if scope not in ("form", "subject", "site"):
        raise ValidationFailed(FieldError("scope", "codelist", "Lock a form, subject or site"))
    if not reason.strip():
        raise ValidationFailed(FieldError("reason", "required", "A reason is required"))
    with ctx.study.db.transaction() as s:
        model = {"form": FormInstance, "subject": Subject, "site": Site}[scope]
        if s.get(model, target_id) is None:
            raise NotFound(f"{scope} {target_id} does not exist")
        if s.execute(select(Lock.id).where(Lock.scope == scope, Lock.target_id == target_id,
                                           Lock.unlocked_at.is_(None))).first():
            raise ValidationFailed(FieldError("scope", "already_locked",
                                              f"This {scope} is already locked"))
        now = ctx.now()
        lk = Lock(scope=scope, target_id=target_id, locked_at=now, locked_by=ctx.user.username,
                  reason=reason.strip())
        s.add(lk)
        s.flush()
        AuditWriter(s, ctx.user.actor, now=now).record(
            "create", "lock", lk.id, field=scope, new=str(target_id), reason=reason.strip())
        return lk.id


def unlock(ctx: UserContext, lock_id: int, reason: str) -> None:
    ctx.require(Action.LOCK)
    if not reason.strip():
        raise ValidationFailed(FieldError("reason", "required",
                                          "A reason is required to unlock data"))
    with ctx.study.db.transaction() as s:
        lk = s.get(Lock, lock_id)
        if lk is None or lk.unlocked_at is not None:
            raise NotFound(f"lock {lock_id} is not active")
        now = ctx.now()
        lk.unlocked_at, lk.unlocked_by, lk.unlock_reason = now, ctx.user.username, reason.strip()
        AuditWriter(s, ctx.user.actor, now=now).record(
            "update", "lock", lk.id, field="state", old="locked", new="unlocked",
            reason=reason.strip())


def form_flags(s: Session, fi_ids: list[int]) -> dict[int, set[str]]:
    """{form instance id: {"verified", "signed", "locked"}} for the matrix."""
    out: dict[int, set[str]] = {i: set() for i in fi_ids}
    if not fi_ids:
        return out
    for (fid,) in s.execute(select(Verification.form_instance_id).where(
            Verification.form_instance_id.in_(fi_ids), Verification.cleared_at.is_(None))):
        out[fid].add("verified")
    for (fid,) in s.execute(select(Lock.target_id).where(
            Lock.scope == "form", Lock.target_id.in_(fi_ids), Lock.unlocked_at.is_(None))):
        out[fid].add("locked")
    return out




@dataclass(frozen=True)
class LockRow:
    id: int
    scope: str
    target_id: int
    locked_at: datetime
    locked_by: str
    reason: str


def active_locks(ctx: UserContext, subject_id: int) -> list[LockRow]:
    """The locks in force on a subject, its site or any of its forms."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        subj = s.get(Subject, subject_id)
        if subj is None or subj.study_id != ctx.study.study_id:
            raise NotFound(f"subject {subject_id} does not exist")
        form_ids = list(s.execute(select(FormInstance.id).join(Visit)
                                  .where(Visit.subject_id == subject_id)).scalars())
        q = select(Lock).where(Lock.unlocked_at.is_(None), (
            ((Lock.scope == "subject") & (Lock.target_id == subject_id))
            | ((Lock.scope == "site") & (Lock.target_id == subj.site_id))
            | ((Lock.scope == "form") & Lock.target_id.in_(form_ids or [-1]))))
        return [LockRow(lk.id, lk.scope, lk.target_id, lk.locked_at, lk.locked_by, lk.reason)
                for lk in s.execute(q.order_by(Lock.id)).scalars()]
