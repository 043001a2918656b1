"""Tables of the ODM interchange: files exported and imported (the FileOID chain) and the merge
conflicts a data manager resolves.

Imported by crf_app.storage.models (last line) so that `Base.metadata` always holds them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from crf_app.storage.models import Base, UTCDateTime, utcnow


class InterchangeNode(Base):
    """This database's identity in ODM exchanges (one row, created on the first export).

    It names the chain of transactional files this database writes (FileOID, Originator), so a
    receiver can tell two laptops apart and refuse a file exported by itself.
    """

    __tablename__ = "interchange_node"

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[str] = mapped_column(String(40), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ExportedFile(Base):
    """An ODM file this database wrote. Transactional files form a chain (PriorFileOID)."""

    __tablename__ = "exported_file"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_oid: Mapped[str] = mapped_column(String(120), unique=True)
    prior_file_oid: Mapped[str | None] = mapped_column(String(120))
    file_type: Mapped[str] = mapped_column(String(20))
    sequence: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(64))
    last_audit_id: Mapped[int] = mapped_column(Integer, default=0)
    subjects: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(Text, default="")


class ImportedFile(Base):
    """An ODM file merged into (or used to create) this database, with its import report."""

    __tablename__ = "imported_file"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_oid: Mapped[str] = mapped_column(String(120), unique=True)
    prior_file_oid: Mapped[str | None] = mapped_column(String(120), index=True)
    file_type: Mapped[str] = mapped_column(String(20))
    originator: Mapped[str] = mapped_column(Text, default="")
    source_system: Mapped[str] = mapped_column(Text, default="")
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    imported_by: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    report: Mapped[str] = mapped_column(Text, default="")


class MergeConflict(Base):
    """A value changed on both sides since the last exchange: kept local, waiting for a data
    manager to choose (open → resolved; an open conflict is superseded by a newer incoming
    change of the same value)."""

    __tablename__ = "merge_conflict"
    __table_args__ = (Index("ix_merge_conflict_cell", "entity", "entity_id", "field"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subject.id"), index=True)
    visit_id: Mapped[int | None] = mapped_column(ForeignKey("visit.id"))
    form_instance_id: Mapped[int | None] = mapped_column(ForeignKey("form_instance.id"))
    entity: Mapped[str] = mapped_column(String(40))  # audit entity: item, subject, visit
    entity_id: Mapped[str] = mapped_column(String(80))  # audit entity id of the value
    field: Mapped[str] = mapped_column(String(80))  # item id or subject/visit field
    row_index: Mapped[int] = mapped_column(Integer, default=0)
    local_value: Mapped[str | None] = mapped_column(Text)
    local_user: Mapped[str | None] = mapped_column(String(64))
    local_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    incoming_value: Mapped[str | None] = mapped_column(Text)
    incoming_user: Mapped[str | None] = mapped_column(String(64))
    incoming_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    incoming_reason: Mapped[str] = mapped_column(Text, default="")
    file_oid: Mapped[str] = mapped_column(String(120))
    state: Mapped[str] = mapped_column(String(12), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolution: Mapped[str | None] = mapped_column(String(12))
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolution_event_id: Mapped[int | None] = mapped_column(Integer)
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": row_version}
