"""Login and user accounts."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from crf_app.domain.errors import AuthenticationFailed
from crf_app.domain.roles import Action, Role
from crf_app.services.context import CurrentUser, StudyHandle, UserContext
from crf_app.services.passwords import verify_password
from crf_app.services.pipeline import write, write_action
from crf_app.services.setup import NewUser, add_user
from crf_app.storage.audit import Actor, AuditWriter
from crf_app.storage.models import Site, User, utcnow

MAX_FAILED_LOGINS = 5


def login(study: StudyHandle, username: str, password: str) -> UserContext:
    """Check the password; on success the returned context acts for that user.

    Failed attempts are counted and audited; after five the account is locked until an admin
    unlocks it.
    """
    with study.db.transaction() as s:
        user = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        audit = AuditWriter(s, Actor(user.id if user else None, username or "?"))
        if user is None or not user.active:
            audit.record("login_failed", "user", username or "?",
                         reason="unknown or inactive account")
            failed = True
        elif user.failed_logins >= MAX_FAILED_LOGINS:
            audit.record("login_refused", "user", username, reason="account locked")
            failed = True
        elif not verify_password(user.password_hash, password):
            user.failed_logins += 1
            audit.record("login_failed", "user", username, field="failed_logins",
                         old=user.failed_logins - 1, new=user.failed_logins,
                         reason="wrong password")
            failed = True
        else:
            if user.failed_logins:
                audit.record("update", "user", username, field="failed_logins",
                             old=user.failed_logins, new=0, reason="successful login")
            user.failed_logins = 0
            user.last_login_at = utcnow()
            audit.record("login", "user", username)
            failed = False
            current = CurrentUser(user.id, user.username, user.full_name, Role(user.role),
                                  user.site.code if user.site else None)
    if failed:
        locked = user is not None and user.failed_logins >= MAX_FAILED_LOGINS
        raise AuthenticationFailed(
            "This account is locked after too many failed logins; ask an administrator "
            "to unlock it" if locked else "Wrong user name or password")
    return UserContext(study, current)


@dataclass(frozen=True)
class UserRow:
    username: str
    full_name: str
    role: str
    site: str
    active: bool
    locked: bool


def list_users(study: StudyHandle) -> list[UserRow]:
    with study.db.reading() as s:
        rows = s.execute(select(User, Site.code).outerjoin(Site, User.site_id == Site.id)
                         .order_by(User.username)).all()
        return [UserRow(u.username, u.full_name, u.role, code or "all", u.active,
                        u.failed_logins >= MAX_FAILED_LOGINS) for u, code in rows]


@write_action("create_user", Action.MANAGE_USERS, changes_data=False)
def create_user(ctx: UserContext, new: NewUser) -> None:
    """An admin or data manager adds an account; audited."""
    ctx.require(Action.MANAGE_USERS)
    add_user(ctx.study.db, ctx.user.actor, new)


@write_action("unlock_user", Action.MANAGE_USERS, changes_data=False)
def unlock_user(ctx: UserContext, username: str, reason: str) -> None:
    """An admin or data manager unlocks an account locked by failed logins; audited."""
    from crf_app.domain.errors import FieldError, NotFound, ValidationFailed

    ctx.require(Action.MANAGE_USERS)
    if not reason.strip():
        raise ValidationFailed(FieldError("reason", "required", "A reason is required"))
    with write(ctx, "unlock_user") as w:
        s = w.session
        user = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        if user is None:
            raise NotFound(f"user {username!r} does not exist")
        w.touched("user")
        w.audit.record(
            "update", "user", username, field="failed_logins", old=user.failed_logins, new=0,
            reason=reason.strip())
        user.failed_logins = 0
