"""CDISC ODM 1.3.2 export from plain data, streamed with lxml.etree.xmlfile; and the OID scheme
and plain records (ExportPlan, SubjectRecord…) that crf-app's ODM files are made of.

The metadata (Study: GlobalVariables, BasicDefinitions, MetaDataVersion) and AdminData are small
and built as trees; ClinicalData is written one SubjectData at a time as the plan's iterator
(crf_app.services.odm_export reads the database in batches) yields them, so memory does not
grow with the study. Nothing here reads the database. Every file validates against the official
ODM1-3-2.xsd; no vendor extension is used (crf-app specifics travel as Alias, FormalExpression
and Annotation/Flag, which ODM provides).

The OID scheme (what the importer reads back):

    StudyEventDef  SE.<visit code>            FormDef      F.<form id>
    ItemGroupDef   IG.<form id>.<section id>  ItemDef      I.<form id>.<item id>
    CodeList       CL.<name> / CL.<form>.<item>  Location  LOC.<site code>   User  USR.<username>

plus a reserved `CRFAPP` event and reserved forms that carry what ODM has no element for: the
subject record (initials, year of birth, arm, consent…), each visit's record (planned and actual
date, status, deviation), and in the subject's `CRFAPP` event the two logs and the signatures:

    F.CRFAPP.AE / IG.CRFAPP.AE      the adverse-event log, one repeat of the group per event
    F.CRFAPP.DOSE / IG.CRFAPP.DOSE  the dosing log, one repeat per administration or missed dose
    F.CRFAPP.SIGNATURE              every electronic signature (valid or invalidated), each repeat
                                    carrying an ODM <Signature> that references a SignatureDef

A log row's ItemGroupRepeatKey is its identity in every database (`log_row_key`: when and by
whom it was created), so a merge finds the same row on the other laptop. Log values travel with
their audited history like form values; dosing queries are annotations on the row.
Their OIDs contain `CRFAPP.`, which no visit code or form id can.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

from lxml import etree

from crf_app import __version__
from crf_app.domain.adverse_events import (
    AE_ACTIONS,
    AE_GRADES,
    AE_LOCATIONS,
    AE_OUTCOMES,
    AE_RELATIONSHIPS,
    AE_SEVERITIES,
    AE_TERMS,
    SERIOUSNESS_CRITERIA,
    TREATMENT_MAX,
    VERBATIM_MAX,
    YES_NO,
)
from crf_app.domain.dosing import GIVEN_BY, LOT_MAX, MISSED_REASON_MAX, NOSTRILS, ROUTES
from crf_app.domain.errors import CrfError
from crf_app.domain.forms import FormDef, FormLibrary, ItemDef
from crf_app.domain.forms.types import format_limit
from crf_app.domain.protocol import Protocol
from crf_app.domain.subjects import SEXES, SubjectStatus

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
SOURCE_SYSTEM = "crf-app"
TRANSACTIONAL, SNAPSHOT = "Transactional", "Snapshot"

# --- the OID scheme -----------------------------------------------------------------------------
SUBJECT_EVENT_OID = "SE.CRFAPP.SUBJECT"
SUBJECT_FORM_OID = "F.CRFAPP.SUBJECT"
SUBJECT_GROUP_OID = "IG.CRFAPP.SUBJECT"
VISIT_FORM_OID = "F.CRFAPP.VISIT"
VISIT_GROUP_OID = "IG.CRFAPP.VISIT"
FORM_STATUS_CODELIST = "CL.CRFAPP.FORM_STATUS"
QUERY_STATE_CODELIST = "CL.CRFAPP.QUERY_STATE"
FLAG_TYPE_CODELIST = "CL.CRFAPP.FLAG_TYPE"
FLAG_STATUS, FLAG_QUERY = "STATUS", "QUERY"
FORM_STATUSES = ("not_started", "in_progress", "complete", "verified", "signed", "locked")
QUERY_STATES = ("open", "answered", "closed")
ALIAS_DAY, ALIAS_WINDOW, ALIAS_FORM_VERSION = "crf-app:day", "crf-app:window", "crf-app:version"
EXPRESSION_CONTEXT = "crf-app"


def event_oid(code: str) -> str:
    return f"SE.{code}"


def form_oid(form_id: str) -> str:
    return f"F.{form_id}"


def group_oid(form_id: str, section_id: str) -> str:
    return f"IG.{form_id}.{section_id}"


def item_oid(form_id: str, item_id: str) -> str:
    return f"I.{form_id}.{item_id}"


def site_oid(code: str) -> str:
    return f"LOC.{code}"


def user_oid(username: str) -> str:
    return f"USR.{username}"


def mdv_oid(version: int) -> str:
    return f"MDV.{version}"


@dataclass(frozen=True)
class RecordField:
    """A subject or visit attribute carried as an item of a reserved CRFAPP form."""

    attr: str  # model attribute, and the audit event's field
    item_id: str
    label: str
    data_type: str  # ODM DataType
    codelist: str | None = None  # CRFAPP codelist OID

    @property
    def oid(self) -> str:
        return f"I.CRFAPP.{self.item_id}"


SUBJECT_FIELDS = (
    RecordField("site", "SITE", "Site", "text", "CL.CRFAPP.SITE"),
    RecordField("initials", "INITIALS", "Initials", "text"),
    RecordField("birth_year", "BRTHYR", "Year of birth", "integer"),
    RecordField("sex", "SEX", "Sex", "text", "CL.CRFAPP.SEX"),
    RecordField("arm", "ARM", "Arm", "text", "CL.CRFAPP.ARM"),
    RecordField("consent_date", "RFICDTC", "Informed-consent date", "date"),
    RecordField("enrolled_on", "ENRLDT", "Enrolment date", "date"),
    RecordField("baseline_date", "BASEDT", "Baseline date (study day 1)", "date"),
    RecordField("status", "SUBJSTAT", "Subject status", "text", "CL.CRFAPP.SUBJECT_STATUS"),
    RecordField("status_reason", "STATRSN", "Reason for the status", "text"),
    RecordField("status_date", "STATDT", "Date of the status", "date"),
)
VISIT_FIELDS = (
    RecordField("planned_date", "PLANDT", "Planned date", "date"),
    RecordField("actual_date", "VISDT", "Visit date", "date"),
    RecordField("status", "VISSTAT", "Visit status", "text"),
    RecordField("deviation", "DEVIATN", "Protocol deviation", "text"),
)


@dataclass(frozen=True)
class LogField(RecordField):
    """A column of a log row (an item of a reserved repeating group).

    `attr` is the field name the log's audit events use; `column` the model column when it
    differs ("" for derived fields such as an AE's seriousness criteria).
    """

    column: str | None = None
    audited: bool = True
    max_length: int | None = None

    @property
    def model_column(self) -> str:
        return self.attr if self.column is None else self.column


@dataclass(frozen=True)
class LogDef:
    """One log carried as a reserved form with one repeating item group."""

    entity: str  # the audit entity of its rows
    form_oid: str
    group_oid: str
    name: str
    description: str
    fields: tuple[LogField, ...]

    def field(self, attr: str) -> LogField:
        return next(f for f in self.fields if f.attr == attr)


AE_FORM_OID, AE_GROUP_OID = "F.CRFAPP.AE", "IG.CRFAPP.AE"
DOSE_FORM_OID, DOSE_GROUP_OID = "F.CRFAPP.DOSE", "IG.CRFAPP.DOSE"
SIGNATURE_FORM_OID, SIGNATURE_GROUP_OID = "F.CRFAPP.SIGNATURE", "IG.CRFAPP.SIGNATURE"
GENERIC_SIGNATURE_OID = "SD.CRFAPP"
LOG_CODELISTS: dict[str, tuple[str, str, Any]] = {  # OID -> (name, data type, codes)
    "CL.CRFAPP.NY": ("Yes/No", "text", YES_NO),
    "CL.CRFAPP.AE_TERM": ("Adverse event terms", "text", AE_TERMS),
    "CL.CRFAPP.AE_LOC": ("Adverse event locations", "text", AE_LOCATIONS),
    "CL.CRFAPP.AE_SEV": ("Severity", "text", AE_SEVERITIES),
    "CL.CRFAPP.AE_GRADE": ("CTCAE grade", "integer", AE_GRADES),
    "CL.CRFAPP.AE_CRIT": ("Seriousness criteria", "text", SERIOUSNESS_CRITERIA),
    "CL.CRFAPP.AE_REL": ("Relationship to the study drug", "text", AE_RELATIONSHIPS),
    "CL.CRFAPP.AE_ACN": ("Action taken with the study drug", "text", AE_ACTIONS),
    "CL.CRFAPP.AE_OUT": ("Outcome", "text", AE_OUTCOMES),
    "CL.CRFAPP.EX_LOC": ("Nostril", "text", NOSTRILS),
    "CL.CRFAPP.EX_ROUTE": ("Route", "text", ROUTES),
    "CL.CRFAPP.EX_GIVBY": ("Given by", "text", GIVEN_BY),
    "CL.CRFAPP.SIG_SCOPE": ("Signature scope", "text",
                            {"form": "Form", "visit": "Visit", "casebook": "Casebook"}),
    "CL.CRFAPP.SIG_STATE": ("Signature state", "text",
                            {"valid": "Valid", "invalidated": "Invalidated"}),
}
MULTI_CODES = {"criteria": "CL.CRFAPP.AE_CRIT"}  # several codes of the list, comma-separated

AE_LOG = LogDef("adverse_event", AE_FORM_OID, AE_GROUP_OID, "Adverse events",
                "crf-app: the adverse-event log (CDASH AE), one repeat per event", (
    LogField("sequence", "AESPID", "Adverse event number (per subject)", "integer",
             audited=False),
    LogField("term", "AEDECOD", "Adverse event term", "text", "CL.CRFAPP.AE_TERM",
             max_length=40),
    LogField("verbatim", "AETERM", "Verbatim term", "text", max_length=VERBATIM_MAX),
    LogField("location", "AELOC", "Location", "text", "CL.CRFAPP.AE_LOC", max_length=20),
    LogField("start_date", "AESTDAT", "Start date", "date"),
    LogField("start_time", "AESTTIM", "Start time", "time"),
    LogField("end_date", "AEENDAT", "End date", "date"),
    LogField("ongoing", "AEONGO", "Ongoing", "text", "CL.CRFAPP.NY"),
    LogField("severity", "AESEV", "Severity", "text", "CL.CRFAPP.AE_SEV", max_length=10),
    LogField("grade", "AETOXGR", "CTCAE grade", "integer", "CL.CRFAPP.AE_GRADE"),
    LogField("serious", "AESER", "Serious", "text", "CL.CRFAPP.NY"),
    LogField("criteria", "AESCRIT", "Seriousness criteria (codes of CL.CRFAPP.AE_CRIT, "
             "comma-separated)", "text", column="", max_length=120),
    LogField("relationship", "AEREL", "Relationship to the study drug", "text",
             "CL.CRFAPP.AE_REL", max_length=20),
    LogField("action", "AEACN", "Action taken with the study drug", "text", "CL.CRFAPP.AE_ACN",
             max_length=20),
    LogField("outcome", "AEOUT", "Outcome", "text", "CL.CRFAPP.AE_OUT", max_length=30),
    LogField("treatment", "AECONTRT", "Treatment given", "text", max_length=TREATMENT_MAX),
    LogField("flags", "AEFLAGS", "Checks flagged when saved (rule names)", "text",
             max_length=120),
    LogField("flag_text", "AEFLGTXT", "Checks flagged when saved (messages)", "text",
             audited=False),
    LogField("sae_recorded_at", "AESAEDTC", "Recorded as serious at (SAE clock start)",
             "datetime"),
    LogField("sae_reported_at", "AESAERDT", "SAE report received by the sponsor at",
             "datetime"),
    LogField("created_at", "AECRTDTC", "Record created at", "datetime", audited=False),
    LogField("created_by", "AECRTBY", "Record created by", "text", audited=False,
             max_length=64),
))
DOSE_LOG = LogDef("dose", DOSE_FORM_OID, DOSE_GROUP_OID, "Dosing",
                  "crf-app: the dosing log (CDASH EX), one repeat per administration or "
                  "missed dose", (
    LogField("date", "EXSTDAT", "Date", "date", column="dose_date"),
    LogField("time", "EXSTTIM", "Time", "time", column="dose_time"),
    LogField("dose_mg", "EXDOSE", "Dose per instillation (mg)", "float"),
    LogField("dose_unit", "EXDOSU", "Dose unit", "text", audited=False, max_length=10),
    LogField("instillations", "EXNINST", "Instillations", "integer"),
    LogField("nostril", "EXLOC", "Nostril", "text", "CL.CRFAPP.EX_LOC", max_length=20),
    LogField("route", "EXROUTE", "Route", "text", "CL.CRFAPP.EX_ROUTE", max_length=20),
    LogField("lot", "EXLOT", "Lot number", "text", max_length=LOT_MAX),
    LogField("given_by", "EXGIVBY", "Given by", "text", "CL.CRFAPP.EX_GIVBY", max_length=10),
    LogField("missed", "EXMISSED", "Dose missed", "text", "CL.CRFAPP.NY"),
    LogField("missed_reason", "EXREASOC", "Reason the dose was missed", "text",
             max_length=MISSED_REASON_MAX),
    LogField("findings", "EXFINDNG", "Checks that raised a query (rule names)", "text",
             max_length=200),
    LogField("warnings", "EXWARN", "Checks shown as warnings (rule names)", "text",
             audited=False, max_length=200),
    LogField("created_at", "EXCRTDTC", "Record created at", "datetime", audited=False),
    LogField("created_by", "EXCRTBY", "Record created by", "text", audited=False,
             max_length=64),
))
LOGS = (AE_LOG, DOSE_LOG)
SIGNATURE_FIELDS = (
    LogField("scope", "SGSCOPE", "Signed scope", "text", "CL.CRFAPP.SIG_SCOPE", audited=False),
    LogField("visit", "SGVISIT", "Visit signed (visit code)", "text", audited=False),
    LogField("form", "SGFORM", "Form signed (form id)", "text", audited=False),
    LogField("username", "SGUSER", "Signer (user name)", "text", audited=False),
    LogField("printed_name", "SGNAME", "Printed name of the signer", "text", audited=False),
    LogField("meaning", "SGMEAN", "Meaning of the signature", "text", audited=False),
    LogField("signed_at", "SGDTC", "Signed at", "datetime", audited=False),
    LogField("values_hash", "SGHASH", "SHA-256 of the values signed (in the signing database)",
             "text", audited=False),
    LogField("forms_signed", "SGNFORM", "Forms signed", "integer", audited=False),
    LogField("state", "SGSTATE", "State", "text", "CL.CRFAPP.SIG_STATE", audited=False),
    LogField("invalidated_at", "SGINVDTC", "Invalidated at", "datetime", audited=False),
    LogField("invalidated_reason", "SGINVRSN", "Why it was invalidated", "text",
             audited=False),
)


def log_row_key(created_at: datetime, created_by: str, ordinal: int) -> str:
    """A log row's identity in every database: when and by whom it was created, and its rank
    among the rows the same save created (the quick daily entry saves several at once)."""
    return f"{timestamp(created_at)}/{created_by}/{ordinal}"


def signature_oids(meanings: list[str]) -> dict[str, str]:
    """SignatureDef OIDs by meaning (SD.1, SD.2… in the order given)."""
    return {m: f"SD.{i}" for i, m in enumerate(dict.fromkeys(meanings), start=1)}


def text_of(value: object) -> str | None:
    """A stored attribute as the text the audit trail records ('' counts as no value)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def item_entity_id(screening_number: str, visit_code: str, form_id: str, item_id: str,
                   row: int | None) -> str:
    """The audit entity id of one value (as crf_app.services.forms.save_form writes it)."""
    label = f"{screening_number}/{visit_code}/{form_id}/{item_id}"
    return label if row is None else f"{label}[{row + 1}]"


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

LOG_BY_ENTITY = {log.entity: log for log in LOGS}
NS = ODM_NS
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

Progress = Callable[[int, int], None]
Cancelled = Callable[[], bool]


class ExportCancelled(CrfError):
    """The user cancelled the export; the partial file was deleted."""


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _el(tag: str, attrib: dict[str, Any] | None = None, text: str | None = None,
        nsmap: bool = False) -> etree._Element:
    el = etree.Element(_q(tag), {k: str(v) for k, v in (attrib or {}).items() if v is not None},
                       nsmap={None: NS} if nsmap else None)
    if text is not None:
        el.text = text
    return el


def _sub(parent: etree._Element, tag: str, attrib: dict[str, Any] | None = None,
         text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, _q(tag),
                          {k: str(v) for k, v in (attrib or {}).items() if v is not None})
    if text is not None:
        el.text = text
    return el


def _translated(parent: etree._Element, tag: str, text: str) -> etree._Element:
    wrapper = _sub(parent, tag)
    _sub(wrapper, "TranslatedText", {XML_LANG: "en"}, text)
    return wrapper


def timestamp(at: datetime) -> str:
    """An ODM datetime in UTC with microseconds (what the audit trail stores)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def to_odm_value(item_type: str | None, value: str) -> str:
    """crf-app's canonical text -> the ODM value (ISO 8601 times carry seconds)."""
    if item_type == "time" and len(value) == 5:
        return value + ":00"
    if item_type == "datetime" and len(value) == 16:
        return value + ":00"
    return value


# --- metadata -----------------------------------------------------------------------------------
class _Meta:
    """OIDs of codelists and units for one export, computed once from the form library."""

    def __init__(self, plan: ExportPlan):
        self.plan = plan
        lib = plan.library
        self.forms: list[FormDef] = list(lib.forms.values())
        self.units: dict[str, str] = {}
        for form in self.forms:
            for item in form.items:
                if item.unit and item.unit not in self.units:
                    self.units[item.unit] = self._unit_oid(item.unit)
        shared: dict[str, tuple] = {}
        clash: set[str] = set()
        for form in self.forms:
            for item in form.items:
                if isinstance(item.codelist, str):
                    codes = tuple((c.code, c.label) for c in item.codes)
                    if shared.setdefault(item.codelist, codes) != codes:
                        clash.add(item.codelist)
        self.codelist_of: dict[tuple[str, str], str] = {}
        self.codelists: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        for form in self.forms:
            for item in form.items:
                if not item.codes:
                    continue
                if item.type == "yes_no":
                    oid, name = "CL.YES_NO", "YES_NO"
                elif isinstance(item.codelist, str) and item.codelist not in clash:
                    oid, name = f"CL.{item.codelist}", item.codelist
                else:
                    oid, name = f"CL.{form.id}.{item.id}", f"{form.id}.{item.id}"
                self.codelist_of[(form.id, item.id)] = oid
                self.codelists.setdefault(oid, (name, [(c.code, c.label) for c in item.codes]))

    def _unit_oid(self, unit: str) -> str:
        slug = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in unit).strip("_")
        oid = f"MU.{slug or 'UNIT'}"
        n = 2
        while oid in self.units.values():
            oid = f"MU.{slug or 'UNIT'}_{n}"
            n += 1
        return oid


def study_element(plan: ExportPlan) -> etree._Element:
    """<Study>: GlobalVariables, BasicDefinitions and the MetaDataVersion."""
    meta = _Meta(plan)
    protocol = plan.protocol
    study = _el("Study", {"OID": plan.study_oid}, nsmap=True)
    gv = _sub(study, "GlobalVariables")
    _sub(gv, "StudyName", text=plan.title)
    _sub(gv, "StudyDescription", text=f"{plan.title}. Protocol {protocol.protocol_number} "
                                      f"version {protocol.protocol_version}"
                                      + (f"; sponsor {protocol.sponsor}" if protocol.sponsor
                                         else "") + ".")
    _sub(gv, "ProtocolName", text=protocol.protocol_number)
    if meta.units:
        bd = _sub(study, "BasicDefinitions")
        for unit, oid in meta.units.items():
            mu = _sub(bd, "MeasurementUnit", {"OID": oid, "Name": unit})
            _translated(mu, "Symbol", unit)
    mdv = _sub(study, "MetaDataVersion", {
        "OID": mdv_oid(plan.metadata_version),
        "Name": f"Metadata version {plan.metadata_version}",
        "Description": f"Protocol {protocol.protocol_version}"})
    _protocol(mdv, plan)
    methods: list[etree._Element] = []
    conditions: list[etree._Element] = []
    for form in meta.forms:
        _form_def(mdv, form)
    _record_form_defs(mdv)
    for form in meta.forms:
        for section in form.sections:
            _group_def(mdv, form, section, methods, conditions)
    _record_group_defs(mdv)
    for form in meta.forms:
        for item in form.items:
            _item_def(mdv, meta, form, item)
    _record_item_defs(mdv)
    for oid, (name, codes) in meta.codelists.items():
        _codelist(mdv, oid, name, codes)
    _record_codelists(mdv, plan)
    for el in conditions + methods:
        mdv.append(el)
    return study


def _protocol(mdv: etree._Element, plan: ExportPlan) -> None:
    protocol = plan.protocol
    prot = _sub(mdv, "Protocol")
    _translated(prot, "Description", f"{protocol.title} ({protocol.protocol_number} "
                                     f"v{protocol.protocol_version})")
    _sub(prot, "StudyEventRef", {"StudyEventOID": SUBJECT_EVENT_OID, "OrderNumber": 1,
                                 "Mandatory": "Yes"})
    for i, v in enumerate(protocol.visits, start=2):
        _sub(prot, "StudyEventRef", {"StudyEventOID": event_oid(v.code), "OrderNumber": i,
                                     "Mandatory": "Yes"})
    se = _sub(mdv, "StudyEventDef", {"OID": SUBJECT_EVENT_OID, "Name": "Subject record",
                                     "Repeating": "No", "Type": "Common"})
    _sub(se, "FormRef", {"FormOID": SUBJECT_FORM_OID, "OrderNumber": 1, "Mandatory": "Yes"})
    for i, oid in enumerate((AE_FORM_OID, DOSE_FORM_OID, SIGNATURE_FORM_OID), start=2):
        _sub(se, "FormRef", {"FormOID": oid, "OrderNumber": i, "Mandatory": "No"})
    for v in protocol.visits:
        se = _sub(mdv, "StudyEventDef", {"OID": event_oid(v.code), "Name": v.name,
                                         "Repeating": "No", "Type": "Scheduled"})
        _sub(se, "FormRef", {"FormOID": VISIT_FORM_OID, "OrderNumber": 1,
                             "Mandatory": "Yes"})
        for j, form_id in enumerate(v.forms, start=2):
            _sub(se, "FormRef", {"FormOID": form_oid(form_id), "OrderNumber": j,
                                 "Mandatory": "No"})
        _sub(se, "Alias", {"Context": ALIAS_DAY, "Name": str(v.day)})
        _sub(se, "Alias", {"Context": ALIAS_WINDOW,
                           "Name": f"-{v.window.before}/+{v.window.after}"})


def _form_def(mdv: etree._Element, form: FormDef) -> None:
    fd = _sub(mdv, "FormDef", {"OID": form_oid(form.id), "Name": form.title,
                               "Repeating": "No"})
    if form.description:
        _translated(fd, "Description", form.description)
    for i, section in enumerate(form.sections, start=1):
        _sub(fd, "ItemGroupRef", {"ItemGroupOID": group_oid(form.id, section.id),
                                  "OrderNumber": i, "Mandatory": "No"})
    _sub(fd, "Alias", {"Context": ALIAS_FORM_VERSION, "Name": str(form.version)})


def _group_def(mdv: etree._Element, form: FormDef, section: Any,
               methods: list[etree._Element], conditions: list[etree._Element]) -> None:
    ig = _sub(mdv, "ItemGroupDef", {"OID": group_oid(form.id, section.id),
                                    "Name": section.title,
                                    "Repeating": "Yes" if section.repeating else "No"})
    if section.help:
        _translated(ig, "Description", section.help)
    for i, item in enumerate(section.items, start=1):
        attrs: dict[str, Any] = {"ItemOID": item_oid(form.id, item.id), "OrderNumber": i,
                                 "Mandatory": "Yes" if item.required else "No"}
        if item.compute:
            oid = f"MT.{form.id}.{item.id}"
            attrs["MethodOID"] = oid
            method = _el("MethodDef", {"OID": oid, "Name": f"Compute {item.id}",
                                       "Type": "Computation"})
            _translated(method, "Description", f"{item.label} = {item.compute}")
            _sub(method, "FormalExpression", {"Context": EXPRESSION_CONTEXT}, item.compute)
            methods.append(method)
        if item.show_if:
            oid = f"CD.{form.id}.{item.id}"
            attrs["CollectionExceptionConditionOID"] = oid
            cond = _el("ConditionDef", {"OID": oid, "Name": f"Skip {item.id}"})
            _translated(cond, "Description", f"{item.label} is collected only when "
                                             f"{item.show_if}")
            _sub(cond, "FormalExpression", {"Context": EXPRESSION_CONTEXT},
                 f"not ({item.show_if})")
            conditions.append(cond)
        _sub(ig, "ItemRef", attrs)
    if section.max_rows:
        _sub(ig, "Alias", {"Context": "crf-app:max_rows", "Name": str(section.max_rows)})


ODM_TYPES = {"integer": "integer", "decimal": "float", "date": "date",
             "partial_date": "partialDate", "time": "time", "datetime": "datetime",
             "text": "text", "choice": "text", "yes_no": "text", "multi_choice": "string"}


def _item_def(mdv: etree._Element, meta: _Meta, form: FormDef, item: ItemDef) -> None:
    attrs: dict[str, Any] = {"OID": item_oid(form.id, item.id), "Name": item.id,
                             "DataType": ODM_TYPES[item.type]}
    if item.type == "text":
        attrs["Length"] = item.text_limit
    elif item.codes:
        attrs["Length"] = max(len(c.code) for c in item.codes) if item.type != "multi_choice" \
            else sum(len(c.code) + 1 for c in item.codes)
    if item.type == "decimal":
        attrs["SignificantDigits"] = item.precision or 0
    if item.type == "multi_choice":
        attrs["Comment"] = "Several codes of the code list, separated by '|'"
    idef = _sub(mdv, "ItemDef", attrs)
    if item.help:
        _translated(idef, "Description", item.help)
    _translated(idef, "Question", item.label)
    if item.unit:
        _sub(idef, "MeasurementUnitRef", {"MeasurementUnitOID": meta.units[item.unit]})
    hmin, hmax, smin, smax = item.bounds
    for bound, comparator, soft_hard, what in ((hmin, "GE", "Hard", "below the minimum"),
                                               (hmax, "LE", "Hard", "above the maximum"),
                                               (smin, "GE", "Soft", "below the expected"),
                                               (smax, "LE", "Soft", "above the expected")):
        if bound is None:
            continue
        shown = format_limit(item, bound)
        rc = _sub(idef, "RangeCheck", {"Comparator": comparator, "SoftHard": soft_hard})
        _sub(rc, "CheckValue", text=shown)
        flag = f" ({item.soft.flag})" if soft_hard == "Soft" and item.soft and item.soft.flag \
            else ""
        _translated(rc, "ErrorMessage", f"{item.label} is {what} {shown}"
                                        f"{' ' + item.unit if item.unit else ''}{flag}")
    if item.codes:
        _sub(idef, "CodeListRef", {"CodeListOID": meta.codelist_of[(form.id, item.id)]})
    if item.soft and item.soft.flag:
        _sub(idef, "Alias", {"Context": "crf-app:soft_flag", "Name": item.soft.flag})


def _codelist(mdv: etree._Element, oid: str, name: str, codes: list[tuple[str, str]],
              data_type: str = "text") -> None:
    cl = _sub(mdv, "CodeList", {"OID": oid, "Name": name, "DataType": data_type})
    for i, (code, label) in enumerate(codes, start=1):
        cli = _sub(cl, "CodeListItem", {"CodedValue": code, "OrderNumber": i})
        _translated(cli, "Decode", label)


def _record_form_defs(mdv: etree._Element) -> None:
    for oid, name, group in ((SUBJECT_FORM_OID, "Subject record", SUBJECT_GROUP_OID),
                             (VISIT_FORM_OID, "Visit record", VISIT_GROUP_OID)):
        fd = _sub(mdv, "FormDef", {"OID": oid, "Name": name, "Repeating": "No"})
        _translated(fd, "Description", "crf-app: what the app keeps about the "
                                       + ("subject" if "SUBJECT" in oid else "visit")
                                       + " outside the case report forms")
        _sub(fd, "ItemGroupRef", {"ItemGroupOID": group, "OrderNumber": 1, "Mandatory": "Yes"})
    for oid, group, name, description in _repeating_records():
        fd = _sub(mdv, "FormDef", {"OID": oid, "Name": name, "Repeating": "No"})
        _translated(fd, "Description", description)
        _sub(fd, "ItemGroupRef", {"ItemGroupOID": group, "OrderNumber": 1, "Mandatory": "No"})


def _repeating_records() -> list[tuple[str, str, str, str]]:
    return [(log.form_oid, log.group_oid, log.name, log.description) for log in LOGS] + [
        (SIGNATURE_FORM_OID, SIGNATURE_GROUP_OID, "Electronic signatures",
         "crf-app: every electronic signature of the subject (valid or invalidated), one "
         "repeat per signature, each with its ODM Signature")]


def _record_group_defs(mdv: etree._Element) -> None:
    groups: list[tuple[str, str, tuple[RecordField, ...], str]] = [
        (SUBJECT_GROUP_OID, "Subject", SUBJECT_FIELDS, "No"),
        (VISIT_GROUP_OID, "Visit", VISIT_FIELDS, "No")]
    groups += [(log.group_oid, log.name, log.fields, "Yes") for log in LOGS]
    groups.append((SIGNATURE_GROUP_OID, "Signatures", SIGNATURE_FIELDS, "Yes"))
    for oid, name, fields, repeating in groups:
        ig = _sub(mdv, "ItemGroupDef", {"OID": oid, "Name": name, "Repeating": repeating})
        for i, f in enumerate(fields, start=1):
            _sub(ig, "ItemRef", {"ItemOID": f.oid, "OrderNumber": i, "Mandatory": "No"})


def _record_item_defs(mdv: etree._Element) -> None:
    fields: list[RecordField] = [*SUBJECT_FIELDS, *VISIT_FIELDS, *SIGNATURE_FIELDS]
    for log in LOGS:
        fields += log.fields
    for f in fields:
        attrs: dict[str, Any] = {"OID": f.oid, "Name": f.item_id, "DataType": f.data_type}
        if isinstance(f, LogField) and f.max_length:
            attrs["Length"] = f.max_length
        if f.data_type == "float":
            attrs["SignificantDigits"] = 3
        idef = _sub(mdv, "ItemDef", attrs)
        _translated(idef, "Question", f.label)
        if f.codelist:
            _sub(idef, "CodeListRef", {"CodeListOID": f.codelist})


def _record_codelists(mdv: etree._Element, plan: ExportPlan) -> None:
    protocol = plan.protocol
    lists: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("CL.CRFAPP.SITE", "Sites", [(s.code, s.name) for s in protocol.sites]),
        ("CL.CRFAPP.SEX", "Sex", list(SEXES.items())),
        ("CL.CRFAPP.ARM", "Arms", [(a.code, a.name) for a in protocol.arms]),
        ("CL.CRFAPP.SUBJECT_STATUS", "Subject status", list(SubjectStatus.LABELS.items())),
        (FORM_STATUS_CODELIST, "Form status",
         [(s, s.replace("_", " ").capitalize()) for s in FORM_STATUSES]),
        (QUERY_STATE_CODELIST, "Query state", [(s, s.capitalize()) for s in QUERY_STATES]),
        (FLAG_TYPE_CODELIST, "Annotation flag type",
         [(FLAG_STATUS, "Form status"), (FLAG_QUERY, "Query")]),
    ]
    for oid, name, codes in lists:
        _codelist(mdv, oid, name, codes)
    for oid, (name, data_type, mapping) in LOG_CODELISTS.items():
        _codelist(mdv, oid, name, list(mapping.items()), data_type)


def admin_element(plan: ExportPlan) -> etree._Element:
    """<AdminData>: the users named by the audit records and the sites (Locations)."""
    admin = _el("AdminData", {"StudyOID": plan.study_oid}, nsmap=True)
    for username, full_name in plan.users:
        user = _sub(admin, "User", {"OID": user_oid(username)})
        _sub(user, "LoginName", text=username)
        _sub(user, "FullName", text=full_name)
    for code, name in plan.sites:
        loc = _sub(admin, "Location", {"OID": site_oid(code), "Name": name or code,
                                       "LocationType": "Site"})
        _sub(loc, "MetaDataVersionRef", {"StudyOID": plan.study_oid,
                                         "MetaDataVersionOID": mdv_oid(plan.metadata_version),
                                         "EffectiveDate": plan.study_created.isoformat()})
    defs = [(oid, meaning) for meaning, oid in signature_oids(plan.signature_meanings).items()]
    for oid, meaning in [*defs, (GENERIC_SIGNATURE_OID, "Electronic signature (its meaning is "
                                                        "recorded with the signature)")]:
        sd = _sub(admin, "SignatureDef", {"OID": oid, "Methodology": "Electronic"})
        _sub(sd, "Meaning", text=meaning)
        _sub(sd, "LegalReason", text="21 CFR Part 11 electronic signature: user name and "
                                     "password entered again at signing")
    return admin


# --- clinical data ------------------------------------------------------------------------------
# ClinicalData is written as text, subject by subject: building some 2,000 elements per subject
# through lxml costs several times more than formatting them. Every value goes through `_attr`
# or `_text`, which escape it and refuse the characters XML cannot hold; the tests validate the
# files against the ODM schema.
_BAD = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_NOT_XML = re.compile(f"[{_BAD}]")
_ATTR_SPECIAL = re.compile(f'[&<>"\n\r\t{_BAD}]')
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                               "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})
_TEXT_SPECIAL = re.compile(f"[&<>\r{_BAD}]")
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def _checked(value: str) -> str:
    if (bad := _NOT_XML.search(value)) is not None:
        raise ExportRefused(f"a value holds the character U+{ord(bad.group()):04X}, which XML "
                            "cannot carry; nothing was written")
    return value


def _attr(value: str) -> str:
    """An attribute value, escaped (line breaks and tabs survive as character references)."""
    if _ATTR_SPECIAL.search(value) is None:
        return value
    return _checked(value).translate(_ATTR_ESCAPES)


def _text(value: str) -> str:
    if _TEXT_SPECIAL.search(value) is None:
        return value
    return _checked(value).translate(_TEXT_ESCAPES)


class ExportRefused(CrfError):
    """A value cannot be written to XML (a control character); nothing was written."""


class _SubjectWriter:
    """The text of one SubjectData at a time (`subject`)."""

    def __init__(self, plan: ExportPlan):
        self.plan = plan
        self.tx = plan.transactional
        self.library = plan.library
        self.warnings: list[str] = []
        self.signature_oids = {m: _attr(oid) for m, oid in
                               signature_oids(plan.signature_meanings).items()}
        self.tt = ' TransactionType="Upsert"' if self.tx else ""
        self.out: list[str] = []
        self._site = ""  # the subject's LocationOID, escaped
        self._audits: dict[tuple, str] = {}  # the values of one save share their record
        self._user_oids: dict[str | None, str] = {}

    def _user(self, user: str | None) -> str:
        oid = self._user_oids.get(user)
        if oid is None:
            oid = self._user_oids[user] = _attr(user_oid(user or "unknown"))
        return oid

    def _audit(self, user: str | None, at: datetime, reason: str = "") -> str:
        key = (user, at, reason)
        text = self._audits.get(key)
        if text is None:
            text = self._audits[key] = (
                f'<AuditRecord><UserRef UserOID="{self._user(user)}"/>'
                f'<LocationRef LocationOID="{self._site}"/>'
                f"<DateTimeStamp>{timestamp(at)}</DateTimeStamp>"
                + (f"<ReasonForChange>{_text(reason)}</ReasonForChange>" if reason else "")
                + "</AuditRecord>")
        return text

    def _signature(self, sig: SignatureRecord) -> str:
        oid = self.signature_oids.get(sig.meaning, GENERIC_SIGNATURE_OID)
        return (f'<Signature><UserRef UserOID="{self._user(sig.username)}"/>'
                f'<LocationRef LocationOID="{self._site}"/>'
                f'<SignatureRef SignatureOID="{oid}"/>'
                f"<DateTimeStamp>{timestamp(sig.signed_at)}</DateTimeStamp></Signature>")

    @staticmethod
    def _annotation(seq: int, flag_codelist: str, flag: str, flag_type: str,
                    comment: str | None = None) -> str:
        return (f'<Annotation SeqNum="{seq}">'
                + (f'<Comment SponsorOrSite="Sponsor">{_text(comment)}</Comment>'
                   if comment is not None else "")
                + f'<Flag><FlagValue CodeListOID="{flag_codelist}">{_text(flag)}</FlagValue>'
                  f'<FlagType CodeListOID="{FLAG_TYPE_CODELIST}">{flag_type}</FlagType>'
                  "</Flag></Annotation>")

    def _queries(self, notes: list[QueryNote], seq: int = 1, prefix: bool = True) -> str:
        parts = []
        for note in notes:
            where = (f"{note.item_id}" + (f" row {note.row + 1}" if note.row else "") + ": "
                     if prefix and note.item_id else "")
            parts.append(self._annotation(seq, QUERY_STATE_CODELIST, note.state, FLAG_QUERY,
                                          f"Query ({note.origin}, {note.state}): "
                                          f"{where}{note.text}"))
            seq += 1
        return "".join(parts)

    def _cell(self, oid: str, item_type: str | None, cell: Cell,
              notes: list[QueryNote] | tuple = ()) -> None:
        """The ItemData of one value (`oid` escaped): each audited change in a transactional
        file, else the current value with its last AuditRecord."""
        items: list[tuple[str, str]] = []  # (start tag, content)
        convert = item_type in ("time", "datetime")
        if self.tx and cell.history:
            for ch in cell.history:
                if ch.new is None:
                    start = f'<ItemData ItemOID="{oid}" TransactionType="Remove"'
                else:
                    value = to_odm_value(item_type, ch.new) if convert else ch.new
                    start = (f'<ItemData ItemOID="{oid}" Value="{_attr(value)}" '
                             f'TransactionType="{"Insert" if ch.old is None else "Update"}"')
                items.append((start, self._audit(ch.user, ch.at, ch.reason)
                               if ch.at is not None else ""))
            if cell.history[-1].new != cell.value:  # a value changed without an audit event
                if cell.value is None:
                    items.append((f'<ItemData ItemOID="{oid}" TransactionType="Remove"', ""))
                else:
                    value = to_odm_value(item_type, cell.value)
                    items.append((f'<ItemData ItemOID="{oid}" Value="{_attr(value)}" '
                                  'TransactionType="Upsert"', ""))
        elif cell.value is not None:
            audited = [ch for ch in cell.history if ch.at is not None]
            value = to_odm_value(item_type, cell.value)
            items.append((f'<ItemData ItemOID="{oid}" Value="{_attr(value)}"{self.tt}',
                          self._audit(audited[-1].user, audited[-1].at, audited[-1].reason)
                          if audited else ""))
        if not items:
            return
        if notes:
            start, content = items[-1]
            items[-1] = (start, content + self._queries(list(notes), prefix=False))
        self.out.extend(f"{start}>{content}</ItemData>" if content else f"{start}/>"
                        for start, content in items)

    def _record_form(self, form: str, group: str, fields: tuple[RecordField, ...],
                     cells: list[Cell]) -> None:
        self.out.append(f'<FormData FormOID="{form}"{self.tt}>'
                        f'<ItemGroupData ItemGroupOID="{group}"{self.tt}>')
        spec = {f.item_id: f for f in fields}
        for cell in cells:
            f = spec[cell.item_id]
            self._cell(_attr(f.oid), f.data_type, cell)
        self.out.append("</ItemGroupData></FormData>")

    def _log(self, log: LogDef, rows: list[LogRow]) -> None:
        out = self.out
        out.append(f'<FormData FormOID="{log.form_oid}"{self.tt}>')
        oids = {f.item_id: _attr(f.oid) for f in log.fields}
        by_attr = {f.attr: f for f in log.fields}
        for row in rows:
            out.append(f'<ItemGroupData ItemGroupOID="{log.group_oid}" '
                       f'ItemGroupRepeatKey="{_attr(row.key)}"{self.tt}>')
            if row.updated_at is not None:
                out.append(self._audit(row.updated_by, row.updated_at))
            present = {c.item_id for c in row.cells}
            on_items: dict[str, list[QueryNote]] = {}
            loose = []
            for note in row.queries:
                f = by_attr.get(note.item_id)
                if f is not None and f.item_id in present:
                    on_items.setdefault(f.item_id, []).append(note)
                else:
                    loose.append(note)
            if loose:
                out.append(self._queries(loose))
            for cell in row.cells:
                self._cell(oids[cell.item_id], None, cell, on_items.get(cell.item_id, ()))
            out.append("</ItemGroupData>")
        out.append("</FormData>")

    def _signatures(self, sigs: list[SignatureRecord]) -> None:
        out = self.out
        out.append(f'<FormData FormOID="{SIGNATURE_FORM_OID}"{self.tt}>')
        for i, sig in enumerate(sigs, start=1):
            out.append(f'<ItemGroupData ItemGroupOID="{SIGNATURE_GROUP_OID}" '
                       f'ItemGroupRepeatKey="{i}"{self.tt}>{self._signature(sig)}')
            values = sig.values()
            out.extend(f'<ItemData ItemOID="{_attr(f.oid)}" '
                       f'Value="{_attr(values[f.attr])}"{self.tt}/>'  # type: ignore[arg-type]
                       for f in SIGNATURE_FIELDS if values[f.attr] is not None)
            out.append("</ItemGroupData>")
        out.append("</FormData>")

    def _form(self, rec: FormRecord, label: str, signed: SignatureRecord | None = None
              ) -> None:
        try:
            form = self.library.get(rec.form_id)
        except KeyError:
            self.warnings.append(f"{label}: form {rec.form_id!r} is not in the study's "
                                 "metadata; not exported")
            return
        out = self.out
        out.append(f'<FormData FormOID="{_attr(form_oid(form.id))}"{self.tt}>')
        if rec.updated_at is not None:
            out.append(self._audit(rec.updated_by, rec.updated_at))
        if signed is not None:
            out.append(self._signature(signed))
        out.append(self._annotation(1, FORM_STATUS_CODELIST, rec.status, FLAG_STATUS))
        groups: dict[tuple[int, int], list[tuple[int, Cell, ItemDef]]] = {}
        order = {item.id: (si, ii) for si, s in enumerate(form.sections)
                 for ii, item in enumerate(s.items)}
        cell_keys = set()
        for cell in rec.cells:
            if cell.item_id not in order:
                self.warnings.append(f"{label}/{form.id}: item {cell.item_id!r} is not in the "
                                     f"form (version {form.version}); not exported")
                continue
            si, ii = order[cell.item_id]
            section = form.sections[si]
            row = cell.row if section.repeating else 0
            groups.setdefault((si, row), []).append((ii, cell, section.items[ii]))
            cell_keys.add((cell.item_id, row))
        on_items: dict[tuple[str, int], list[QueryNote]] = {}
        loose = []
        for note in rec.queries:
            target = (note.item_id, note.row)
            (on_items.setdefault(target, []) if target in cell_keys else loose).append(note)
        out.append(self._queries(loose, seq=2))
        for (si, row), cells in sorted(groups.items(), key=lambda kv: kv[0]):
            section = form.sections[si]
            repeat = f' ItemGroupRepeatKey="{row + 1}"' if section.repeating else ""
            out.append(f'<ItemGroupData ItemGroupOID="{_attr(group_oid(form.id, section.id))}"'
                       f"{repeat}{self.tt}>")
            for _, cell, item in sorted(cells, key=lambda c: c[0]):
                self._cell(_attr(item_oid(form.id, item.id)), item.type, cell,
                           on_items.get((cell.item_id, row), []))
            out.append("</ItemGroupData>")
        out.append("</FormData>")

    def subject(self, rec: SubjectRecord) -> str:
        """The SubjectData of `rec` as XML text."""
        try:
            return self._subject(rec)
        except ExportRefused as exc:
            raise ExportRefused(f"subject {rec.key}: {exc}") from None

    def _subject(self, rec: SubjectRecord) -> str:
        signed: dict[tuple[str, str | None, str | None], SignatureRecord] = {}
        for sig in rec.signatures:  # ODM has room for one Signature per element: the latest
            key = (sig.scope, sig.visit, sig.form)
            if sig.state == "valid" and (key not in signed
                                         or sig.signed_at >= signed[key].signed_at):
                signed[key] = sig
        self._audits.clear()
        self._site = _attr(site_oid(rec.site))
        out = self.out = [f'<SubjectData SubjectKey="{_attr(rec.key)}"{self.tt}>']
        if (casebook := signed.get(("casebook", None, None))) is not None:
            out.append(self._signature(casebook))
        out.append(f'<SiteRef LocationOID="{self._site}"/>')
        out.append(self._queries(rec.queries))
        out.append(f'<StudyEventData StudyEventOID="{SUBJECT_EVENT_OID}"{self.tt}>')
        self._record_form(SUBJECT_FORM_OID, SUBJECT_GROUP_OID, SUBJECT_FIELDS, rec.fields)
        for log in LOGS:
            rows = [row for row in rec.logs if row.log == log.entity]
            if rows:
                self._log(log, rows)
        if rec.signatures:
            self._signatures(rec.signatures)
        out.append("</StudyEventData>")
        for visit in rec.visits:
            out.append(f'<StudyEventData StudyEventOID="{_attr(event_oid(visit.code))}"'
                       f"{self.tt}>")
            if (by_visit := signed.get(("visit", visit.code, None))) is not None:
                out.append(self._signature(by_visit))
            out.append(self._queries(visit.queries))
            self._record_form(VISIT_FORM_OID, VISIT_GROUP_OID, VISIT_FIELDS, visit.fields)
            for form in visit.forms:
                self._form(form, f"{rec.key}/{visit.code}",
                           signed.get(("form", visit.code, form.form_id)))
            out.append("</StudyEventData>")
        out.append("</SubjectData>")
        self.out = []
        return "".join(out)


def write_odm(out: IO[bytes], plan: ExportPlan, *, progress: Progress | None = None,
              cancelled: Cancelled | None = None) -> tuple[int, list[str]]:
    """Stream the ODM file to `out`; returns (subjects written, warnings)."""
    writer = _SubjectWriter(plan)
    root = {"FileType": plan.file_type, "FileOID": plan.file_oid,
            "CreationDateTime": timestamp(plan.created_at), "ODMVersion": "1.3.2",
            "Description": plan.description, "Originator": plan.originator,
            "SourceSystem": plan.source_system, "SourceSystemVersion": plan.source_version,
            "Granularity": "All"}
    if plan.prior_file_oid:
        root["PriorFileOID"] = plan.prior_file_oid
    if not plan.transactional:
        root["AsOfDateTime"] = timestamp(plan.created_at)
    head = (f'<ODM xmlns="{NS}"' + "".join(f' {k}="{_attr(v)}"' for k, v in root.items())
            + ">")
    out.write(b"<?xml version='1.0' encoding='utf-8'?>\n" + head.encode("utf-8"))
    for element in (study_element(plan), admin_element(plan)):
        out.write(etree.tostring(element, encoding="utf-8", xml_declaration=False))
    out.write(f'<ClinicalData StudyOID="{_attr(plan.study_oid)}" MetaDataVersionOID='
              f'"{_attr(mdv_oid(plan.metadata_version))}">'.encode())
    n = 0
    for rec in plan.subjects:
        if cancelled is not None and cancelled():
            raise ExportCancelled("export cancelled; no file was written")
        out.write(writer.subject(rec).encode("utf-8"))
        n += 1
        if progress is not None:
            progress(n, max(n, plan.subject_count))
    out.write(b"</ClinicalData></ODM>")
    return n, writer.warnings


class _HashingFile:
    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


@dataclass(frozen=True)
class WrittenFile:
    subjects: int
    sha256: str
    warnings: list[str]


def write_odm_file(out: Path, plan: ExportPlan, *, progress: Progress | None = None,
                   cancelled: Cancelled | None = None) -> WrittenFile:
    """Write the ODM file `out`; it appears only when complete (written beside it, synced to
    disk, then renamed), and a failed or cancelled export leaves nothing behind."""
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    try:
        with tmp.open("wb") as fh:
            hashing = _HashingFile(fh)
            n, warnings = write_odm(hashing, plan, progress=progress, cancelled=cancelled)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return WrittenFile(n, hashing.sha.hexdigest(), warnings)
