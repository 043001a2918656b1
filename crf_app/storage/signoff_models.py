"""Sign-off records: source data verification, electronic signatures, locks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from crf_app.storage.models import Base, UTCDateTime


class Verification(Base):
    """A monitor's source data verification of a saved form; removed (cleared) by any change."""

    __tablename__ = "verification"

    id: Mapped[int] = mapped_column(primary_key=True)
    form_instance_id: Mapped[int] = mapped_column(ForeignKey("form_instance.id"), index=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subject.id"), index=True)
    verified_at: Mapped[datetime] = mapped_column(UTCDateTime)
    verified_by: Mapped[str] = mapped_column(String(64))
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cleared_reason: Mapped[str] = mapped_column(Text, default="")


class Signature(Base):
    """An electronic signature (Part 11 §11.50/11.70): who (printed name), when (UTC), meaning,
    and a SHA-256 of exactly the values signed; invalidated by any later change to them."""

    __tablename__ = "signature"
    __table_args__ = (Index("ix_signature_subject_state", "subject_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subject.id"))
    scope: Mapped[str] = mapped_column(String(10))  # form / visit / casebook
    visit_id: Mapped[int | None] = mapped_column(ForeignKey("visit.id"))
    form_instance_id: Mapped[int | None] = mapped_column(ForeignKey("form_instance.id"))
    user_id: Mapped[int] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(64))
    printed_name: Mapped[str] = mapped_column(Text)
    meaning: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    values_hash: Mapped[str] = mapped_column(String(64))
    forms_signed: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12), default="valid")
    invalidated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    invalidated_reason: Mapped[str] = mapped_column(Text, default="")


class Lock(Base):
    """A data manager's lock on a form, a subject or a site; nobody changes locked data."""

    __tablename__ = "data_lock"
    __table_args__ = (Index("ix_data_lock_target", "scope", "target_id", "unlocked_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(10))  # form / subject / site
    target_id: Mapped[int] = mapped_column(Integer)
    locked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    unlocked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unlocked_by: Mapped[str | None] = mapped_column(String(64))
    unlock_reason: Mapped[str] = mapped_column(Text, default="")
