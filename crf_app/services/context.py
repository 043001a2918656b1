"""An opened study and the logged-in user: what every service call receives."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import select

from crf_app.domain.errors import CrfError, DatabaseRefused, PermissionDenied
from crf_app.domain.protocol import Protocol, parse_protocol
from crf_app.domain.roles import Action, Role, allowed
from crf_app.storage.audit import Actor
from crf_app.storage.engine import Database, resolve_database_url
from crf_app.storage.migrate import open_database, shown_url
from crf_app.storage.models import MetadataVersion, Study


class NoStudy(CrfError):
    """The database holds no study yet (run `crf-app init` or `crf-app demo`)."""


@dataclass
class StudyHandle:
    """An open study database and the metadata (protocol, forms) it runs on."""

    db: Database
    study_id: int
    oid: str
    title: str
    is_demo: bool
    protocol: Protocol
    forms: dict = field(default_factory=dict)
    metadata_version: int = 1

    @property
    def location(self) -> str:
        """The database file, or a server database's URL without its password (shown)."""
        return str(self.db.path or shown_url(self.db.url))

    def close(self) -> None:
        self.db.dispose()


def open_study(url: str | None = None) -> StudyHandle:
    """Open the database (migrating it), then load its study and current metadata version."""
    db = open_database(resolve_database_url(url))
    try:
        return load_study(db)
    except BaseException:
        db.dispose()
        raise


def open_new_database(url: str | None = None) -> Database:
    """Open (creating and migrating) the database a new study will be created in."""
    return open_database(resolve_database_url(url))


def database_exists(url: str | None = None) -> bool:
    """Whether the database file named by `url` (or the default) already exists."""
    from crf_app.storage.engine import sqlite_path

    path = sqlite_path(resolve_database_url(url))
    return path is None or path.exists()


def load_study(db: Database) -> StudyHandle:
    with db.reading() as s:
        study = s.execute(select(Study).order_by(Study.id).limit(1)).scalar_one_or_none()
        if study is None:
            raise NoStudy(f"the database {db.path or shown_url(db.url)} holds no study yet; "
                          "create one with `crf-app init` (or `crf-app demo`)")
        mdv = s.execute(select(MetadataVersion).where(MetadataVersion.study_id == study.id)
                        .order_by(MetadataVersion.version.desc()).limit(1)).scalar_one_or_none()
        if mdv is None:
            raise DatabaseRefused("the study has no protocol metadata; the database is damaged")
        protocol = parse_protocol(json.loads(mdv.protocol_json), "protocol stored in database")
        return StudyHandle(db=db, study_id=study.id, oid=study.oid, title=study.title,
                           is_demo=study.is_demo, protocol=protocol,
                           forms=json.loads(mdv.forms_json), metadata_version=mdv.version)


@dataclass(frozen=True)
class CurrentUser:
    id: int
    username: str
    full_name: str
    role: Role
    site_code: str | None = None

    @property
    def actor(self) -> Actor:
        return Actor(self.id, self.username)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class UserContext:
    """The study and the logged-in user a service call acts for."""

    study: StudyHandle
    user: CurrentUser
    clock: Callable[[], datetime] = _utcnow

    def now(self) -> datetime:
        return self.clock()

    def today(self) -> date:
        return self.clock().astimezone().date()

    def require(self, action: Action, site_code: str | None = None) -> None:
        """Refuse (PermissionDenied) unless the user's role allows `action` at `site_code`."""
        if not allowed(self.user.role, action):
            self._refuse(f"{self.user.role.label} {self.user.username!r} may not "
                         f"{action.value}", action, site_code)
        if site_code is not None and self.user.site_code not in (None, site_code):
            self._refuse(f"{self.user.username!r} works at site {self.user.site_code} and may "
                         f"not {action.value} at site {site_code}", action, site_code)

    def _refuse(self, message: str, action: Action, site_code: str | None) -> None:
        """Log the refused attempt in the audit trail (its own transaction), then refuse."""
        from crf_app.storage.audit import AuditWriter

        def log() -> None:
            with self.study.db.transaction() as s:
                AuditWriter(s, self.user.actor, now=self.now()).record(
                    "permission_denied", "user", self.user.username, field=action.name.lower(),
                    new=site_code, reason=message)

        self.study.db.after_transaction(log)
        raise PermissionDenied(message)
