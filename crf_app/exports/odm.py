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

plus a reserved `CRFAPP` event and two forms that carry what ODM has no element for: the subject
record (initials, year of birth, arm, consent…) and each visit's record (planned and actual date,
status, deviation). Their OIDs contain `CRFAPP.`, which no visit code or form id can.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

from lxml import etree

from crf_app import __version__
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
@dataclass(frozen=True)
class Change:
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
    signatures: list[Any] = field(default_factory=list)  # hook: signatures are not kept yet


@dataclass
class VisitRecord:
    code: str
    fields: list[Cell] = field(default_factory=list)
    forms: list[FormRecord] = field(default_factory=list)
    queries: list[QueryNote] = field(default_factory=list)


@dataclass
class SubjectRecord:
    key: str
    site: str
    fields: list[Cell] = field(default_factory=list)
    visits: list[VisitRecord] = field(default_factory=list)
    queries: list[QueryNote] = field(default_factory=list)

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

NS = ODM_NS
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
FLUSH_EVERY = 25  # subjects between flushes of the output buffer

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


def _codelist(mdv: etree._Element, oid: str, name: str, codes: list[tuple[str, str]]) -> None:
    cl = _sub(mdv, "CodeList", {"OID": oid, "Name": name, "DataType": "text"})
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


def _record_group_defs(mdv: etree._Element) -> None:
    for oid, name, fields in ((SUBJECT_GROUP_OID, "Subject", SUBJECT_FIELDS),
                              (VISIT_GROUP_OID, "Visit", VISIT_FIELDS)):
        ig = _sub(mdv, "ItemGroupDef", {"OID": oid, "Name": name, "Repeating": "No"})
        for i, f in enumerate(fields, start=1):
            _sub(ig, "ItemRef", {"ItemOID": f.oid, "OrderNumber": i, "Mandatory": "No"})


def _record_item_defs(mdv: etree._Element) -> None:
    for f in SUBJECT_FIELDS + VISIT_FIELDS:
        idef = _sub(mdv, "ItemDef", {"OID": f.oid, "Name": f.item_id, "DataType": f.data_type})
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
    return admin


# --- clinical data ------------------------------------------------------------------------------
class _SubjectWriter:
    def __init__(self, plan: ExportPlan):
        self.plan = plan
        self.tx = plan.transactional
        self.library = plan.library
        self.warnings: list[str] = []

    def _tt(self, value: str = "Upsert") -> dict[str, str]:
        return {"TransactionType": value} if self.tx else {}

    def _audit(self, parent: etree._Element, user: str | None, at: datetime, site: str,
               reason: str = "") -> None:
        ar = _sub(parent, "AuditRecord")
        _sub(ar, "UserRef", {"UserOID": user_oid(user or "unknown")})
        _sub(ar, "LocationRef", {"LocationOID": site_oid(site)})
        _sub(ar, "DateTimeStamp", text=timestamp(at))
        if reason:
            _sub(ar, "ReasonForChange", text=reason)

    def _annotation(self, parent: etree._Element, seq: int, flag_codelist: str, flag: str,
                    flag_type: str, comment: str | None = None) -> None:
        ann = _sub(parent, "Annotation", {"SeqNum": seq})
        if comment is not None:
            _sub(ann, "Comment", {"SponsorOrSite": "Sponsor"}, comment)
        fl = _sub(ann, "Flag")
        _sub(fl, "FlagValue", {"CodeListOID": flag_codelist}, flag)
        _sub(fl, "FlagType", {"CodeListOID": FLAG_TYPE_CODELIST}, flag_type)

    def _queries(self, parent: etree._Element, notes: list[QueryNote], seq: int = 1,
                 prefix: bool = True) -> int:
        for note in notes:
            where = (f"{note.item_id}" + (f" row {note.row + 1}" if note.row else "") + ": "
                     if prefix and note.item_id else "")
            self._annotation(parent, seq, QUERY_STATE_CODELIST, note.state, FLAG_QUERY,
                             f"Query ({note.origin}, {note.state}): {where}{note.text}")
            seq += 1
        return seq

    def _cell(self, group: etree._Element, oid: str, item_type: str | None, cell: Cell,
              site: str, notes: list[QueryNote] | tuple = ()) -> None:
        last: etree._Element | None = None
        if self.tx and cell.history:
            for ch in cell.history:
                if ch.new is None:
                    last = _sub(group, "ItemData", {"ItemOID": oid,
                                                    "TransactionType": "Remove"})
                else:
                    last = _sub(group, "ItemData", {
                        "ItemOID": oid, "Value": to_odm_value(item_type, ch.new),
                        "TransactionType": "Insert" if ch.old is None else "Update"})
                if ch.at is not None:
                    self._audit(last, ch.user, ch.at, site, ch.reason)
            if cell.history[-1].new != cell.value:  # a value changed without an audit event
                if cell.value is None:
                    last = _sub(group, "ItemData", {"ItemOID": oid,
                                                    "TransactionType": "Remove"})
                else:
                    last = _sub(group, "ItemData", {
                        "ItemOID": oid, "Value": to_odm_value(item_type, cell.value),
                        "TransactionType": "Upsert"})
        elif cell.value is not None:
            last = _sub(group, "ItemData", {"ItemOID": oid,
                                            "Value": to_odm_value(item_type, cell.value),
                                            **self._tt()})
            audited = [ch for ch in cell.history if ch.at is not None]
            if audited:
                self._audit(last, audited[-1].user, audited[-1].at, site, audited[-1].reason)
        if notes and last is not None:
            self._queries(last, list(notes), prefix=False)

    def _record_form(self, event: etree._Element, form: str, group: str,
                     fields: tuple[RecordField, ...], cells: list[Cell],
                     site: str) -> None:
        fd = _sub(event, "FormData", {"FormOID": form, **self._tt()})
        ig = _sub(fd, "ItemGroupData", {"ItemGroupOID": group, **self._tt()})
        spec = {f.item_id: f for f in fields}
        for cell in cells:
            f = spec[cell.item_id]
            self._cell(ig, f.oid, f.data_type, cell, site)

    def _form(self, event: etree._Element, rec: FormRecord, site: str, label: str) -> None:
        try:
            form = self.library.get(rec.form_id)
        except KeyError:
            self.warnings.append(f"{label}: form {rec.form_id!r} is not in the study's "
                                 "metadata; not exported")
            return
        fd = _sub(event, "FormData", {"FormOID": form_oid(form.id), **self._tt()})
        if rec.updated_at is not None:
            self._audit(fd, rec.updated_by, rec.updated_at, site)
        self._annotation(fd, 1, FORM_STATUS_CODELIST, rec.status, FLAG_STATUS)
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
        on_items = {}
        loose = []
        for note in rec.queries:
            target = (note.item_id, note.row)
            (on_items.setdefault(target, []) if target in cell_keys else loose).append(note)
        self._queries(fd, loose, seq=2)
        for (si, row), cells in sorted(groups.items(), key=lambda kv: kv[0]):
            section = form.sections[si]
            attrs: dict[str, Any] = {"ItemGroupOID": group_oid(form.id, section.id)}
            if section.repeating:
                attrs["ItemGroupRepeatKey"] = str(row + 1)
            ig = _sub(fd, "ItemGroupData", {**attrs, **self._tt()})
            for _, cell, item in sorted(cells, key=lambda c: c[0]):
                self._cell(ig, item_oid(form.id, item.id), item.type, cell, site,
                           on_items.get((cell.item_id, row), []))

    def subject(self, rec: SubjectRecord) -> etree._Element:
        sd = _el("SubjectData", {"SubjectKey": rec.key, **self._tt()}, nsmap=True)
        _sub(sd, "SiteRef", {"LocationOID": site_oid(rec.site)})
        self._queries(sd, rec.queries)
        se = _sub(sd, "StudyEventData", {"StudyEventOID": SUBJECT_EVENT_OID, **self._tt()})
        self._record_form(se, SUBJECT_FORM_OID, SUBJECT_GROUP_OID, SUBJECT_FIELDS,
                          rec.fields, rec.site)
        for visit in rec.visits:
            se = _sub(sd, "StudyEventData", {"StudyEventOID": event_oid(visit.code),
                                             **self._tt()})
            self._queries(se, visit.queries)
            self._record_form(se, VISIT_FORM_OID, VISIT_GROUP_OID, VISIT_FIELDS,
                              visit.fields, rec.site)
            for form in visit.forms:
                self._form(se, form, rec.site, f"{rec.key}/{visit.code}")
        return sd


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
    n = 0
    with etree.xmlfile(out, encoding="utf-8") as xf:
        xf.write_declaration()
        with xf.element(_q("ODM"), root, nsmap={None: NS}):
            xf.write(study_element(plan))
            xf.write(admin_element(plan))
            with xf.element(_q("ClinicalData"), {
                    "StudyOID": plan.study_oid,
                    "MetaDataVersionOID": mdv_oid(plan.metadata_version)}):
                for rec in plan.subjects:
                    if cancelled is not None and cancelled():
                        raise ExportCancelled("export cancelled; no file was written")
                    xf.write(writer.subject(rec))
                    n += 1
                    if n % FLUSH_EVERY == 0:
                        xf.flush()
                    if progress is not None:
                        progress(n, max(n, plan.subject_count))
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
