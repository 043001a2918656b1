"""Creating a study (its protocol and forms stored as metadata version 1) and its first users."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import func, select

from crf_app.domain.errors import CrfError, FieldError, ValidationFailed
from crf_app.domain.protocol import Protocol
from crf_app.domain.roles import Role, password_problems
from crf_app.services.context import StudyHandle, load_study
from crf_app.services.passwords import hash_password
from crf_app.storage.audit import SYSTEM, Actor, AuditWriter
from crf_app.storage.engine import Database
from crf_app.storage.migrate import shown_url
from crf_app.storage.models import MetadataVersion, Site, Study, User


class StudyExists(CrfError):
    """The database already holds a study."""


@dataclass(frozen=True)
class NewUser:
    username: str
    full_name: str
    role: Role | str
    password: str
    site_code: str | None = None


def create_study(db: Database, protocol: Protocol, forms: dict, *, admin: NewUser,
                 is_demo: bool = False) -> StudyHandle:
    """Create the study from its protocol and form definitions, with its first admin account."""
    problems = check_new_user(admin)
    if problems:
        raise ValidationFailed(problems)
    with db.transaction() as s:
        if s.execute(select(func.count(Study.id))).scalar_one():
            raise StudyExists(f"the database {db.path or shown_url(db.url)} already holds a "
                              "study")
        audit = AuditWriter(s, SYSTEM)
        study = Study(oid=protocol.study_id, title=protocol.title,
                      protocol_number=protocol.protocol_number, is_demo=is_demo)
        s.add(study)
        s.flush()
        audit.record("create", "study", study.oid, new=protocol.title)
        s.add(MetadataVersion(study_id=study.id, version=1,
                              description=f"Protocol {protocol.protocol_version}",
                              protocol_json=protocol.model_dump_json(),
                              forms_json=json.dumps(forms, sort_keys=True)))
        audit.record("create", "metadata_version", f"{study.oid}/1",
                     new=f"protocol {protocol.protocol_version}, {len(forms)} forms")
        for site in protocol.sites:
            s.add(Site(study_id=study.id, code=site.code, name=site.name))
            audit.record("create", "site", site.code, field="name", new=site.name)
        s.flush()
        _add_user(s, audit, admin)
    return load_study(db)


def check_new_user(u: NewUser) -> list[FieldError]:
    errs = []
    if not u.username or not u.username.replace("_", "").replace(".", "").isalnum():
        errs.append(FieldError("username", "format",
                               "User name must be letters, digits, '.' or '_'"))
    if not u.full_name.strip():
        errs.append(FieldError("full_name", "required",
                               "Full name is required (it is printed on signatures)"))
    if u.role not in {r.value for r in Role}:
        errs.append(FieldError("role", "codelist",
                               f"Role must be one of: {', '.join(r.value for r in Role)}"))
    errs.extend(FieldError("password", "password_rule", f"Password {p}")
                for p in password_problems(u.password, u.username))
    return errs


def _add_user(s, audit: AuditWriter, u: NewUser) -> User:
    if s.execute(select(User.id).where(User.username == u.username)).first():
        raise ValidationFailed(FieldError("username", "unique",
                                          f"User name {u.username!r} is already taken"))
    site_id = None
    if u.site_code:
        site_id = s.execute(select(Site.id).where(Site.code == u.site_code)).scalar()
        if site_id is None:
            raise ValidationFailed(FieldError("site", "codelist",
                                              f"Site {u.site_code!r} does not exist"))
    user = User(username=u.username, full_name=u.full_name.strip(), role=Role(u.role).value,
                site_id=site_id, password_hash=hash_password(u.password))
    s.add(user)
    s.flush()
    for fld, val in (("full_name", user.full_name), ("role", user.role),
                     ("site", u.site_code or "all sites"), ("active", True)):
        audit.record("create", "user", user.username, field=fld, new=val)
    return user


def add_user(db: Database, actor: Actor, new: NewUser) -> None:
    """Add an account (the caller has checked the actor may manage users)."""
    problems = check_new_user(new)
    if problems:
        raise ValidationFailed(problems)
    with db.transaction() as s:
        _add_user(s, AuditWriter(s, actor), new)
