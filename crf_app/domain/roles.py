"""Roles and what each may do. Enforced in the services, not only by hidden buttons."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    COORDINATOR = "coordinator"
    INVESTIGATOR = "investigator"
    MONITOR = "monitor"
    DATA_MANAGER = "data_manager"
    ADMIN = "admin"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ").capitalize()


class Action(StrEnum):
    VIEW = "view data"
    ENROLL = "enroll subjects"
    EDIT_DATA = "enter and correct data"
    CHANGE_STATUS = "withdraw or complete subjects"
    ASSESS_CAUSALITY = "assess adverse-event causality"
    ANSWER_QUERY = "answer queries"
    RAISE_QUERY = "raise queries"
    CLOSE_QUERY = "close queries"
    VERIFY = "verify source data"
    SIGN = "sign"
    LOCK = "lock and unlock data"
    EXPORT = "export data"
    IMPORT = "import data"
    MANAGE_USERS = "manage user accounts"
    VIEW_AUDIT = "view the audit trail"


_R = Role
_A = Action
PERMISSIONS: dict[Role, frozenset[Action]] = {
    _R.COORDINATOR: frozenset({_A.VIEW, _A.ENROLL, _A.EDIT_DATA, _A.CHANGE_STATUS,
                               _A.ANSWER_QUERY, _A.VIEW_AUDIT}),
    _R.INVESTIGATOR: frozenset({_A.VIEW, _A.ENROLL, _A.EDIT_DATA, _A.CHANGE_STATUS,
                                _A.ANSWER_QUERY, _A.ASSESS_CAUSALITY, _A.SIGN, _A.VIEW_AUDIT}),
    _R.MONITOR: frozenset({_A.VIEW, _A.RAISE_QUERY, _A.CLOSE_QUERY, _A.VERIFY, _A.EXPORT,
                           _A.VIEW_AUDIT}),
    _R.DATA_MANAGER: frozenset({_A.VIEW, _A.RAISE_QUERY, _A.CLOSE_QUERY, _A.LOCK, _A.EXPORT,
                                _A.IMPORT, _A.MANAGE_USERS, _A.VIEW_AUDIT}),
    _R.ADMIN: frozenset({_A.VIEW, _A.MANAGE_USERS, _A.VIEW_AUDIT, _A.EXPORT, _A.IMPORT}),
}


def allowed(role: Role | str, action: Action) -> bool:
    """Whether `role` may perform `action`."""
    return action in PERMISSIONS[Role(role)]


MIN_PASSWORD_LENGTH = 10


def password_problems(password: str, username: str = "") -> list[str]:
    """Why a password is not acceptable (empty list: it is)."""
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"must be at least {MIN_PASSWORD_LENGTH} characters long")
    if not any(c.isalpha() for c in password) or not any(c.isdigit() for c in password):
        problems.append("must contain both letters and digits")
    if username and username.lower() in password.lower():
        problems.append("must not contain the user name")
    return problems
