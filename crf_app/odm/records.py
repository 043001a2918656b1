"""The plain records an ODM file is made of (ExportPlan, SubjectRecord, Cell, Change…): what
crf_app.services.odm_export reads from the database and the importer reads back from a file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import NamedTuple

from crf_app import __version__
from crf_app.domain.forms import FormLibrary
from crf_app.domain.protocol import Protocol
from crf_app.odm.scheme import (
    LOG_BY_ENTITY,
    SIGNATURE_FIELDS,
    SOURCE_SYSTEM,
    SUBJECT_FIELDS,
    TRANSACTIONAL,
    text_of,
)


# --- plain data ---------------------------------------------------------------------------------
class Change(NamedTuple):
    """One audited change of one value: who, when, the new value (None: removed), why."""

    at: datetime | None
    user: str | None
    new: str | None
    reason: str = ""
    old: str | None = None

    @property
    def key(self) -> tuple[datetime | None, str | None, str | None]:
        return (self.at, self.user, self.new)


@dataclass
class Cell:
    """One value (an item of a form row, or a subject/visit attribute) and its history."""

    item_id: str
    value: str | None
    history: list[Change] = field(default_factory=list)
    row: int = 0
    complete_history: bool = False


@dataclass(frozen=True)
class QueryNote:
    item_id: str
    row: int
    state: str
    origin: str
    text: str


@dataclass
class FormRecord:
    form_id: str
    status: str
    updated_at: datetime | None
    updated_by: str | None
    cells: list[Cell] = field(default_factory=list)
    queries: list[QueryNote] = field(default_factory=list)


@dataclass
class VisitRecord:
    code: str
    fields: list[Cell] = field(default_factory=list)
    forms: list[FormRecord] = field(default_factory=list)
    queries: list[QueryNote] = field(default_factory=list)


@dataclass
class LogRow:
    """One row of a log (an adverse event, a dosing record) with each value's history."""

    log: str  # the LogDef's entity
    key: str  # log_row_key: the same row in every database
    cells: list[Cell] = field(default_factory=list)
    updated_at: datetime | None = None
    updated_by: str | None = None
    queries: list[QueryNote] = field(default_factory=list)

    def value(self, attr: str) -> str | None:
        item = next(f.item_id for f in LOG_BY_ENTITY[self.log].fields if f.attr == attr)
        return next((c.value for c in self.cells if c.item_id == item), None)


@dataclass(frozen=True)
class SignatureRecord:
    """An electronic signature: who, when, meaning, what was signed, and whether it holds."""

    scope: str  # form / visit / casebook
    visit: str | None
    form: str | None
    username: str
    printed_name: str
    meaning: str
    signed_at: datetime
    values_hash: str
    forms_signed: int
    state: str
    invalidated_at: datetime | None = None
    invalidated_reason: str = ""

    @property
    def identity(self) -> tuple[str, str | None, str | None, str, datetime]:
        return (self.scope, self.visit, self.form, self.username, self.signed_at)

    def values(self) -> dict[str, str | None]:
        return {f.attr: text_of(getattr(self, f.attr)) for f in SIGNATURE_FIELDS}


@dataclass
class SubjectRecord:
    key: str
    site: str
    fields: list[Cell] = field(default_factory=list)
    visits: list[VisitRecord] = field(default_factory=list)
    queries: list[QueryNote] = field(default_factory=list)
    logs: list[LogRow] = field(default_factory=list)
    signatures: list[SignatureRecord] = field(default_factory=list)

    def field_value(self, attr: str) -> str | None:
        item = next(f.item_id for f in SUBJECT_FIELDS if f.attr == attr)
        return next((c.value for c in self.fields if c.item_id == item), None)


@dataclass
class ExportPlan:
    """Everything the writer needs; `subjects` streams SubjectRecords from the database."""

    study_oid: str
    title: str
    protocol: Protocol
    library: FormLibrary
    metadata_version: int
    study_created: date
    file_oid: str
    prior_file_oid: str | None
    file_type: str
    created_at: datetime
    originator: str
    description: str
    users: list[tuple[str, str]]
    sites: list[tuple[str, str]]
    subject_count: int
    subjects: Iterator[SubjectRecord]
    signature_meanings: list[str] = field(default_factory=list)
    sequence: int = 0
    scope: str = ""
    last_audit_id: int = 0
    source_system: str = SOURCE_SYSTEM
    source_version: str = __version__

    @property
    def transactional(self) -> bool:
        return self.file_type == TRANSACTIONAL

    def close(self) -> None:
        """Stop reading (ends the read transaction if the export stopped half-way)."""
        close = getattr(self.subjects, "close", None)
        if close is not None:
            close()
