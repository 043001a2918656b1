import pytest
from sqlalchemy import select

from crf_app.domain.errors import AuthenticationFailed, PermissionDenied, ValidationFailed
from crf_app.domain.roles import Role
from crf_app.services.accounts import MAX_FAILED_LOGINS, create_user, list_users, login
from crf_app.services.setup import NewUser
from crf_app.storage.models import AuditEvent, User
from tests.conftest import PASSWORD


def test_login_and_password_is_argon2_hashed(study):
    ctx = login(study, "coord", PASSWORD)
    assert ctx.user.role is Role.COORDINATOR and ctx.user.site_code == "S01"
    with study.db.reading() as s:
        stored = s.execute(select(User.password_hash).where(User.username == "coord")).scalar()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_wrong_password_is_refused_and_audited(study):
    with pytest.raises(AuthenticationFailed, match="Wrong user name or password"):
        login(study, "coord", "nope")
    with study.db.reading() as s:
        ev = s.execute(select(AuditEvent).order_by(AuditEvent.id.desc())).scalars().first()
    assert (ev.action, ev.entity_id, ev.reason) == ("login_failed", "coord", "wrong password")


def test_lockout_after_five_failures(study):
    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises(AuthenticationFailed):
            login(study, "mon", "bad-password-1")
    with pytest.raises(AuthenticationFailed, match="locked"):
        login(study, "mon", PASSWORD)
    assert {u.username: u.locked for u in list_users(study)}["mon"] is True


def test_only_admin_or_data_manager_adds_users(study, as_role):
    with pytest.raises(PermissionDenied):
        create_user(as_role(Role.COORDINATOR),
                    NewUser("new1", "New One", Role.COORDINATOR, PASSWORD, "S01"))
    create_user(as_role(Role.ADMIN), NewUser("new1", "New One", Role.COORDINATOR, PASSWORD, "S01"))
    assert "new1" in {u.username for u in list_users(study)}


@pytest.mark.parametrize("user, field", [
    (NewUser("x y", "X", Role.MONITOR, PASSWORD), "username"),
    (NewUser("newbie", "Newbie", Role.MONITOR, "short1"), "password"),
    (NewUser("newbie", "Newbie", Role.MONITOR, "onlyletterslong"), "password"),
    (NewUser("newbie", "Newbie", "boss", PASSWORD), "role"),
    (NewUser("coord", "Again", Role.MONITOR, PASSWORD), "username"),
])
def test_bad_new_user(study, as_role, user, field):
    with pytest.raises(ValidationFailed) as exc:
        create_user(as_role(Role.ADMIN), user)
    assert exc.value.errors[0].field == field
