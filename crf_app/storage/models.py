"""SQLAlchemy 2.0 typed models. Timestamps are stored in UTC; dates are dates."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC; refuses naive datetimes on the way in."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; crf-app stores UTC-aware timestamps only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(primary_key=True)
    oid: Mapped[str] = mapped_column(String(40), unique=True)
    title: Mapped[str] = mapped_column(Text)
    protocol_number: Mapped[str] = mapped_column(String(60))
    is_demo: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    sites: Mapped[list[Site]] = relationship(back_populates="study", order_by="Site.code")
    metadata_versions: Mapped[list[MetadataVersion]] = relationship(
        back_populates="study", order_by="MetadataVersion.version")


class MetadataVersion(Base):
    """The protocol and form definitions a study runs on (ODM MetaDataVersion)."""

    __tablename__ = "metadata_version"
    __table_args__ = (UniqueConstraint("study_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    protocol_json: Mapped[str] = mapped_column(Text)
    forms_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="metadata_versions")


class Site(Base):
    __tablename__ = "site"
    __table_args__ = (UniqueConstraint("study_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    code: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="sites")


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(20))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("site.id"))
    password_hash: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    site: Mapped[Site | None] = relationship()


class Subject(Base):
    __tablename__ = "subject"
    __table_args__ = (UniqueConstraint("study_id", "screening_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), index=True)
    screening_number: Mapped[str] = mapped_column(String(40))
    initials: Mapped[str] = mapped_column(String(4))
    birth_year: Mapped[int] = mapped_column(Integer)
    sex: Mapped[str] = mapped_column(String(1))
    arm: Mapped[str] = mapped_column(String(40))
    consent_date: Mapped[date] = mapped_column(Date)
    enrolled_on: Mapped[date] = mapped_column(Date)
    baseline_date: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20), index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    status_date: Mapped[date | None] = mapped_column(Date)
    metadata_version: Mapped[int] = mapped_column(Integer, default=1)
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    site: Mapped[Site] = relationship()
    visits: Mapped[list[Visit]] = relationship(
        back_populates="subject", order_by="Visit.sequence", cascade="all, delete-orphan")

    __mapper_args__ = {"version_id_col": row_version}


class Visit(Base):
    __tablename__ = "visit"
    __table_args__ = (UniqueConstraint("subject_id", "visit_code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subject.id"), index=True)
    visit_code: Mapped[str] = mapped_column(String(40))
    sequence: Mapped[int] = mapped_column(Integer)
    planned_date: Mapped[date | None] = mapped_column(Date)
    window_start: Mapped[date | None] = mapped_column(Date)
    window_end: Mapped[date | None] = mapped_column(Date)
    actual_date: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20), default="planned")
    deviation: Mapped[str] = mapped_column(Text, default="")
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    subject: Mapped[Subject] = relationship(back_populates="visits")
    forms: Mapped[list[FormInstance]] = relationship(
        back_populates="visit", cascade="all, delete-orphan")

    __mapper_args__ = {"version_id_col": row_version}


class FormInstance(Base):
    __tablename__ = "form_instance"
    __table_args__ = (UniqueConstraint("visit_id", "form_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    visit_id: Mapped[int] = mapped_column(ForeignKey("visit.id"), index=True)
    form_id: Mapped[str] = mapped_column(String(40))
    form_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="not_started")
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_by: Mapped[str | None] = mapped_column(String(64))
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    visit: Mapped[Visit] = relationship(back_populates="forms")
    values: Mapped[list[ItemValue]] = relationship(
        back_populates="form", cascade="all, delete-orphan")

    __mapper_args__ = {"version_id_col": row_version}


class ItemValue(Base):
    __tablename__ = "item_value"
    __table_args__ = (UniqueConstraint("form_instance_id", "item_id", "row_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    form_instance_id: Mapped[int] = mapped_column(ForeignKey("form_instance.id"), index=True)
    item_id: Mapped[str] = mapped_column(String(40))
    row_index: Mapped[int] = mapped_column(Integer, default=0)
    value: Mapped[str] = mapped_column(Text)

    form: Mapped[FormInstance] = relationship(back_populates="values")


class AuditEvent(Base):
    """Append-only, hash-chained audit trail (triggers refuse UPDATE and DELETE)."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_entity", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    user_id: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    entity: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str] = mapped_column(String(80))
    field: Mapped[str] = mapped_column(String(80), default="")
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text, default="")
    subject_id: Mapped[int | None] = mapped_column(Integer, index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Query(Base):
    """A discrepancy on an item, a form or a log row: open → answered → closed (re-open allowed)."""

    __tablename__ = "query"
    __table_args__ = (Index("ix_query_target", "form_instance_id", "item_id", "row_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subject.id"), index=True)
    visit_id: Mapped[int | None] = mapped_column(ForeignKey("visit.id"))
    form_instance_id: Mapped[int | None] = mapped_column(ForeignKey("form_instance.id"))
    item_id: Mapped[str] = mapped_column(String(40), default="")
    row_index: Mapped[int] = mapped_column(Integer, default=0)
    target: Mapped[str] = mapped_column(String(20), default="item")
    origin: Mapped[str] = mapped_column(String(10))
    rule: Mapped[str] = mapped_column(String(60), default="")
    state: Mapped[str] = mapped_column(String(10), index=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    opened_by: Mapped[str] = mapped_column(String(64))
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(String(64))
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    messages: Mapped[list[QueryMessage]] = relationship(
        back_populates="query", order_by="QueryMessage.id", cascade="all, delete-orphan")

    __mapper_args__ = {"version_id_col": row_version}


class QueryMessage(Base):
    __tablename__ = "query_message"

    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("query.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    by: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(10))
    text: Mapped[str] = mapped_column(Text)

    query: Mapped[Query] = relationship(back_populates="messages")
from crf_app.storage import interchange_models as _interchange_models  # noqa: E402,F401
from crf_app.storage import log_models as _log_models  # noqa: E402,F401
from crf_app.storage import signoff_models as _signoff_models  # noqa: E402,F401
