"""Sign-off: source data verification, electronic signatures, locking (roles enforced here)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crf_app.domain.addresses import form_address
from crf_app.domain.errors import (
    AuthenticationFailed,
    FieldError,
    NotFound,
    ValidationFailed,
)
from crf_app.domain.roles import Action
from crf_app.services.context import UserContext
from crf_app.services.pipeline import write, write_action
from crf_app.storage.models import FormInstance, ItemValue, Site, Subject, Visit
from crf_app.storage.signoff_models import Lock, Signature, Verification

MEANINGS = ["Reviewed and approved", "Authored", "Verified as accurate and complete",
            "Responsible investigator sign-off"]


# LockedData, the lock check and what a change voids live in the write pipeline
# (crf_app.services.pipeline) and the coverage rule (crf_app.domain.coverage).


# --- source data verification -----------------------------------------------------------------
def _form_instance(s: Session, ctx: UserContext, visit_id: int, form_id: str) -> FormInstance:
    fi = s.execute(select(FormInstance).where(FormInstance.visit_id == visit_id,
                                              FormInstance.form_id == form_id)
                   ).scalar_one_or_none()
    if fi is None or fi.visit.subject.study_id != ctx.study.study_id:
        raise NotFound(f"form {form_id} has not been saved for this visit")
    return fi


@write_action("verify_form", Action.VERIFY, changes_data=False)
def verify_form(ctx: UserContext, visit_id: int, form_id: str) -> None:
    """A monitor marks a complete form as verified against the source documents (allowed on
    locked data: a verification changes no value)."""
    with write(ctx, "verify_form") as w:
        s = w.session
        fi = _form_instance(s, ctx, visit_id, form_id)
        subj = fi.visit.subject
        w.authorise_subject(subj)
        w.touched("verification")
        if fi.status != "complete":
            raise ValidationFailed(FieldError("status", "complete_first",
                                              "Only a complete form can be verified"))
        if _verification(s, fi.id) is not None:
            raise ValidationFailed(FieldError("status", "already_verified",
                                              "This form is already verified"))
        now = w.now
        v = Verification(form_instance_id=fi.id, subject_id=subj.id, verified_at=now,
                         verified_by=ctx.user.username)
        s.add(v)
        s.flush()
        w.audit.record(
            "create", "verification", v.id, field="state", new="verified",
            reason=form_address(subj.screening_number, fi.visit.visit_code, fi.form_id),
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
            .where(FormInstance.status == "complete", Subject.study_id == ctx.study.study_id,
                   *([Site.code == ctx.user.site_code] if ctx.user.site_code else []))
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


@write_action("sign", Action.SIGN, changes_data=False)
def sign(ctx: UserContext, subject_id: int, *, scope: str, password: str, meaning: str,
         visit_id: int | None = None, form_id: str | None = None) -> int:
    """An investigator signs a form, a visit or the whole casebook by entering their password
    again and choosing the meaning; returns the signature id. Only complete forms are
    signed; a form that is not complete cannot be signed on its own."""
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
    with write(ctx, "sign") as w:
        s = w.session
        subj = s.get(Subject, subject_id)
        w.authorise_subject(subj)
        w.touched("signature")
        forms = s.execute(q).scalars().all()
        if not forms:
            raise ValidationFailed(FieldError("scope", "nothing_to_sign",
                                              "There is no complete form to sign here"))
        now = w.now
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
        w.audit.record(
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
        subj = s.get(Subject, subject_id)
        if subj is None or subj.study_id != ctx.study.study_id:
            raise NotFound(f"subject {subject_id} does not exist")
        ctx.require(Action.VIEW, subj.site.code)
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
def _lock_target(s: Session, ctx: UserContext, scope: str, target_id: int
                 ) -> tuple[Site, int | None]:
    """The site a lock target belongs to, and its subject (None for a site)."""
    model = {"form": FormInstance, "subject": Subject, "site": Site}[scope]
    target = s.get(model, target_id)
    if scope == "form" and target is not None:
        target = target.visit.subject
    if target is not None and scope != "site":
        return target.site, target.id
    if target is None or target.study_id != ctx.study.study_id:
        raise NotFound(f"{scope} {target_id} does not exist")
    return target, None


@write_action("lock", Action.LOCK, changes_data=False)
def lock(ctx: UserContext, scope: str, target_id: int, reason: str) -> int:
    """A data manager locks a form instance, a subject or a site (of their own site, when
    bound to one)."""
    if scope not in ("form", "subject", "site"):
        raise ValidationFailed(FieldError("scope", "codelist", "Lock a form, subject or site"))
    if not reason.strip():
        raise ValidationFailed(FieldError("reason", "required", "A reason is required"))
    with write(ctx, "lock") as w:
        s = w.session
        site, subject_id = _lock_target(s, ctx, scope, target_id)
        w.authorise(site.code, subject_id=subject_id)
        w.touched("lock")
        if s.execute(select(Lock.id).where(Lock.scope == scope, Lock.target_id == target_id,
                                           Lock.unlocked_at.is_(None))).first():
            raise ValidationFailed(FieldError("scope", "already_locked",
                                              f"This {scope} is already locked"))
        lk = Lock(scope=scope, target_id=target_id, locked_at=w.now,
                  locked_by=ctx.user.username, reason=reason.strip())
        s.add(lk)
        s.flush()
        w.audit.record("create", "lock", lk.id, field=scope, new=str(target_id),
                       reason=reason.strip(), subject_id=subject_id)
        return lk.id


@write_action("unlock", Action.LOCK, changes_data=False)
def unlock(ctx: UserContext, lock_id: int, reason: str) -> None:
    """A data manager lifts a lock (of their own site, when bound to one), with a reason."""
    if not reason.strip():
        raise ValidationFailed(FieldError("reason", "required",
                                          "A reason is required to unlock data"))
    with write(ctx, "unlock") as w:
        s = w.session
        lk = s.get(Lock, lock_id)
        if lk is None or lk.unlocked_at is not None:
            raise NotFound(f"lock {lock_id} is not active")
        site, subject_id = _lock_target(s, ctx, lk.scope, lk.target_id)
        w.authorise(site.code, subject_id=subject_id)
        w.touched("lock")
        lk.unlocked_at, lk.unlocked_by, lk.unlock_reason = (w.now, ctx.user.username,
                                                            reason.strip())
        w.audit.record("update", "lock", lk.id, field="state", old="locked", new="unlocked",
                       reason=reason.strip(), subject_id=subject_id)


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
        ctx.require(Action.VIEW, subj.site.code)
        form_ids = list(s.execute(select(FormInstance.id).join(Visit)
                                  .where(Visit.subject_id == subject_id)).scalars())
        q = select(Lock).where(Lock.unlocked_at.is_(None), (
            ((Lock.scope == "subject") & (Lock.target_id == subject_id))
            | ((Lock.scope == "site") & (Lock.target_id == subj.site_id))
            | ((Lock.scope == "form") & Lock.target_id.in_(form_ids or [-1]))))
        return [LockRow(lk.id, lk.scope, lk.target_id, lk.locked_at, lk.locked_by, lk.reason)
                for lk in s.execute(q.order_by(Lock.id)).scalars()]
