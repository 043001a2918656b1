"""Importing CDISC ODM files: merging another laptop's transactional file into this study, or
creating a new study from any ODM 1.3 file (crf-app, OpenClinica, REDCap…), all or nothing.

Reading is safe and streamed: the prolog is checked for a DOCTYPE (refused: no entities, no
billion laughs), lxml parses without resolving entities or touching the network, and each
SubjectData is merged and dropped as soon as it is read. Everything happens in one transaction:
any problem (a file that is not ODM, another study, a gap in the FileOID chain, an unknown OID,
a value of the wrong type, a truncated file) rolls it all back and is reported in plain words.

Merging follows each value's audited history (see `_Merger.merge_cell`): a value changed only on
the other laptop since the last exchange is applied with its history (audit events keep the
original user and time, with the reason "imported from <FileOID>"); a value changed on both
sides becomes a MergeConflict that a data manager resolves; nothing is ever overwritten.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from html import unescape
from pathlib import Path
from typing import IO, Any

from lxml import etree
from pydantic import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from crf_app.domain.errors import CrfError, FieldError, NotFound, ValidationFailed
from crf_app.domain.forms import FormDef, FormLibrary, ItemDef, SectionDef, validate_form
from crf_app.domain.forms.types import parse_value
from crf_app.domain.protocol import Protocol
from crf_app.domain.roles import Action
from crf_app.domain.subjects import SEXES, SubjectStatus, schedule
from crf_app.exports import odm as oe
from crf_app.services.context import StudyHandle, UserContext, load_study
from crf_app.services.forms import flatten, form_library, unflatten
from crf_app.services.odm_export import node_id
from crf_app.storage.audit import GENESIS_HASH, SYSTEM, Actor, AuditWriter, compute_hash
from crf_app.storage.engine import Database
from crf_app.storage.interchange_models import ImportedFile, MergeConflict
from crf_app.storage.models import (
    AuditEvent,
    FormInstance,
    ItemValue,
    Site,
    Subject,
    Visit,
)

NS = oe.ODM_NS
PROLOG_BYTES = 64 * 1024
MAX_PROBLEMS = 50

Progress = Callable[[int, int], None]
Cancelled = Callable[[], bool]


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


class ImportRefused(CrfError):
    """The file cannot be imported; nothing was changed."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or []
        more = "".join(f"\n  - {p}" for p in self.problems[:MAX_PROBLEMS])
        if len(self.problems) > MAX_PROBLEMS:
            more += f"\n  … and {len(self.problems) - MAX_PROBLEMS} more"
        super().__init__(f"{message}{more}")


class ImportCancelled(CrfError):
    """The user cancelled the import; nothing was changed."""


# --- the report ---------------------------------------------------------------------------------
@dataclass
class ImportReport:
    """What an import did, and everything it could not map (never silently dropped)."""

    path: str
    mode: str  # "merge" or "new study"
    file_oid: str = ""
    prior_file_oid: str | None = None
    file_type: str = ""
    source_system: str = ""
    study_oid: str = ""
    already_imported: bool = False
    subjects_added: int = 0
    subjects_updated: int = 0
    subjects_unchanged: int = 0
    forms_added: int = 0
    values_added: int = 0
    values_changed: int = 0
    values_removed: int = 0
    fields_changed: int = 0
    events_recorded: int = 0
    conflicts: list[str] = field(default_factory=list)
    not_imported: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extensions: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """The report as text lines (what the CLI prints and the GUI shows)."""
        out = [f"ODM file {self.path}",
               f"  FileOID {self.file_oid or '?'} ({self.file_type or '?'}"
               + (f", follows {self.prior_file_oid}" if self.prior_file_oid else "")
               + f"), from {self.source_system or 'an unnamed system'}, study "
                 f"{self.study_oid or '?'}"]
        if self.already_imported:
            out.append("  This file was already imported; nothing changed.")
            return out
        out.append(f"  {self.mode}: {self.subjects_added} subjects added, "
                   f"{self.subjects_updated} updated, {self.subjects_unchanged} unchanged; "
                   f"{self.forms_added} forms added; values: {self.values_added} added, "
                   f"{self.values_changed} changed, {self.values_removed} removed; "
                   f"{self.fields_changed} subject/visit fields changed; "
                   f"{self.events_recorded} audit events recorded")
        if self.conflicts:
            out.append(f"  {len(self.conflicts)} merge conflicts (kept the local value; a data "
                       "manager must resolve them):")
            out += [f"    - {c}" for c in self.conflicts]
        if self.not_imported:
            out.append("  Not imported:")
            out += [f"    - {what}" + (f" (×{n})" if n > 1 else "")
                    for what, n in sorted(self.not_imported.items())]
        if self.notes:
            out.append("  Mapping notes:")
            out += [f"    - {n}" for n in self.notes]
        if self.warnings:
            out.append("  Warnings:")
            out += [f"    - {w}" for w in self.warnings]
        if self.extensions:
            out.append("  Vendor extensions ignored: " + ", ".join(
                f"{ns} ({n} elements)" for ns, n in sorted(self.extensions.items())))
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


def format_report(report: ImportReport) -> str:
    """The import report as plain text."""
    return report.text()


# --- safe reading -------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def check_prolog(path: Path) -> None:
    """Refuse what is not XML, and any DOCTYPE (entity declarations: billion laughs, XXE)."""
    with path.open("rb") as fh:
        head = fh.read(PROLOG_BYTES)
    if not head.strip():
        raise ImportRefused(f"{path.name} is empty; nothing was imported")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head.decode("utf-16", errors="replace")
    else:
        text = head.decode("latin-1").removeprefix("\xef\xbb\xbf")
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if text.startswith("<?", pos):
            end, close = text.find("?>", pos), 2
        elif text.startswith("<!--", pos):
            end, close = text.find("-->", pos), 3
        elif text.startswith("<!", pos):
            raise ImportRefused(f"{path.name} declares a DOCTYPE; files with document type "
                                "declarations or entities are refused (they can hide entity "
                                "bombs or read local files); nothing was imported")
        elif text.startswith("<", pos):
            return
        else:
            raise ImportRefused(f"{path.name} is not an XML file (it does not start with '<'); "
                                "nothing was imported")
        if end < 0:
            raise ImportRefused(f"{path.name} is not a well-formed XML file; nothing was "
                                "imported")
        pos = end + close


class _Reader:
    """A file object that reports progress by bytes and lets the user cancel."""

    def __init__(self, fh: IO[bytes], total: int, progress: Progress | None,
                 cancelled: Cancelled | None):
        self.fh, self.total, self.progress, self.cancelled = fh, total, progress, cancelled
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        if self.cancelled is not None and self.cancelled():
            raise ImportCancelled("import cancelled; nothing was imported")
        data = self.fh.read(n)
        self.done += len(data)
        if self.progress is not None:
            self.progress(self.done, self.total)
        return data


@dataclass
class _Header:
    file_oid: str
    file_type: str
    prior_file_oid: str | None
    source_system: str
    originator: str
    created: datetime | None


class _Handler:
    """What the streaming reader calls back."""

    def header(self, h: _Header) -> None: ...

    def metadata(self, studies: list[etree._Element], admins: list[etree._Element]) -> None: ...

    def clinical(self, study_oid: str, mdv_oid: str) -> None: ...

    def subject(self, el: etree._Element) -> None: ...


def _parse_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def stream_odm(path: Path, handler: _Handler, report: ImportReport, *,
               progress: Progress | None = None, cancelled: Cancelled | None = None) -> None:
    """Parse `path` safely, calling `handler` for the header, the metadata (once, before the
    first ClinicalData) and each SubjectData; SubjectData trees are freed after each call."""
    check_prolog(path)
    studies: list[etree._Element] = []
    admins: list[etree._Element] = []
    metadata_done = False
    root_seen = False
    total = path.stat().st_size
    with path.open("rb") as raw:
        source = _Reader(raw, total, progress, cancelled)
        parser = etree.iterparse(source, events=("start", "end"), resolve_entities=False,
                                 no_network=True, huge_tree=False, load_dtd=False,
                                 remove_comments=True, remove_pis=True)
        try:
            for event, el in parser:
                tag = el.tag if isinstance(el.tag, str) else ""
                if event == "start":
                    if not root_seen:
                        root_seen = True
                        _check_root(path, el, handler, report)
                    elif tag == _q("ClinicalData"):
                        if not metadata_done:
                            handler.metadata(studies, admins)
                            metadata_done = True
                        handler.clinical(el.get("StudyOID", ""), el.get("MetaDataVersionOID", ""))
                    continue
                if not tag.startswith("{" + NS + "}"):
                    report.extensions[tag[1:tag.index("}")] if tag.startswith("{")
                                      else "(no namespace)"] += 1
                    continue
                parent = el.getparent()
                parent_tag = parent.tag if parent is not None else None
                if tag == _q("SubjectData") and parent_tag == _q("ClinicalData"):
                    handler.subject(el)
                    el.clear()
                    while el.getprevious() is not None:
                        del parent[0]
                elif tag == _q("Study") and parent_tag == _q("ODM"):
                    studies.append(el)
                elif tag == _q("AdminData") and parent_tag == _q("ODM"):
                    admins.append(el)
                elif tag in (_q("ReferenceData"), _q("Association")) and \
                        parent_tag == _q("ODM"):
                    report.not_imported[f"{etree.QName(el).localname} elements (reference data "
                                        "and associations are not imported)"] += 1
                    el.clear()
                elif tag == _q("ClinicalData"):
                    el.clear()
        except etree.XMLSyntaxError as exc:
            raw.seek(max(0, total - 256))
            truncated = b"</ODM>" not in raw.read() and source.done >= total
            raise ImportRefused(f"{path.name} is not well-formed XML"
                                + (" — it ends in the middle of the document (truncated?)"
                                   if truncated else "")
                                + f": {exc}; nothing was imported") from None
    if not metadata_done:
        handler.metadata(studies, admins)


def _check_root(path: Path, el: etree._Element, handler: _Handler,
                report: ImportReport) -> None:
    docinfo = el.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise ImportRefused(f"{path.name} declares a DOCTYPE; refused; nothing was imported")
    if el.tag != _q("ODM"):
        name = etree.QName(el).localname if isinstance(el.tag, str) else "?"
        raise ImportRefused(f"{path.name} is XML but not a CDISC ODM 1.3 file (its root element "
                            f"is <{name}>, not <ODM> in the namespace {NS}); nothing was "
                            "imported")
    file_oid = el.get("FileOID") or ""
    file_type = el.get("FileType") or ""
    if not file_oid or file_type not in (oe.SNAPSHOT, oe.TRANSACTIONAL):
        raise ImportRefused(f"{path.name}: the ODM root element must have a FileOID and a "
                            "FileType (Snapshot or Transactional); nothing was imported")
    h = _Header(file_oid, file_type, el.get("PriorFileOID") or None,
                el.get("SourceSystem") or "", el.get("Originator") or "",
                _parse_datetime(el.get("CreationDateTime")))
    report.file_oid, report.file_type = h.file_oid, h.file_type
    report.prior_file_oid, report.source_system = h.prior_file_oid, h.source_system
    handler.header(h)


def _child(el: etree._Element, tag: str) -> etree._Element | None:
    return el.find(_q(tag))


def _children(el: etree._Element, tag: str) -> list[etree._Element]:
    return el.findall(_q(tag))


def translated(el: etree._Element | None, tag: str | None = None) -> str:
    """The English (else first) TranslatedText under `el` (or its child `tag`)."""
    if el is not None and tag is not None:
        el = _child(el, tag)
    if el is None:
        return ""
    texts = _children(el, "TranslatedText")
    for t in texts:
        if t.get("{http://www.w3.org/XML/1998/namespace}lang", "en").lower().startswith("en"):
            return (t.text or "").strip()
    return (texts[0].text or "").strip() if texts else ""


# --- the plain records the reader produces ------------------------------------------------------
@dataclass
class _ItemMap:
    item_id: str
    item: ItemDef | None  # None for the reserved subject/visit record items
    convert: Callable[[str], str]  # ODM value -> canonical text; ValueError if refused
    record: oe.RecordField | None = None


@dataclass
class _EventMap:
    code: str | None  # None: the reserved subject-record event
    repeating_codes: dict[str, str] = field(default_factory=dict)

    def code_for(self, key: str | None) -> str | None:
        if self.code is None:
            return None
        if key in (None, "", "1"):
            return self.code
        return self.repeating_codes.get(key)


@dataclass
class _Mapping:
    """How the OIDs of a file map onto this study (built from local or incoming metadata)."""

    dialect: bool  # a crf-app file: subject and visit records travel as reserved forms
    events: dict[str, _EventMap]
    forms: dict[str, str]  # form OID -> form id ("@subject" / "@visit" for the records)
    groups: dict[tuple[str, str], SectionDef | None]
    items: dict[tuple[str, str], _ItemMap]
    users: dict[str, str]
    sites: dict[str, str]  # LocationOID -> site code
    study_sites: dict[str, str]  # ClinicalData StudyOID -> site code
    default_site: str | None
    complete_history: bool
    placeholders: dict[str, str] = field(default_factory=dict)  # subject attr -> value


def _clean(text: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]*>", " ", text or "")).split())


_TIME = re.compile(r"(\d{2}:\d{2})(?::00(?:\.0+)?)?")
_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(?::00(?:\.0+)?)?")
_BOOL = {"1": "Y", "true": "Y", "y": "Y", "yes": "Y", "0": "N", "false": "N", "n": "N",
         "no": "N"}


def converter(item: ItemDef, booleans: bool = False) -> Callable[[str], str]:
    """ODM value text -> the item's canonical text, checked by the forms engine."""
    def convert(raw: str) -> str:
        text = raw.strip()
        pattern = _TIME if item.type == "time" else _DATETIME if item.type == "datetime" \
            else None
        if pattern is not None and (m := pattern.fullmatch(text)):
            text = m.group(1)
        elif booleans:
            text = _BOOL.get(text.lower(), text)
        canonical, _, err, _ = parse_value(item, text)
        if err is not None:
            raise ValueError(err.message)
        if canonical is None:
            raise ValueError(f"{item.label}: empty value")
        return canonical
    return convert


def record_converter(f: oe.RecordField) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        text = raw.strip()
        if f.data_type == "integer":
            int(text)
        elif f.data_type == "date":
            date.fromisoformat(text)
        if not text:
            raise ValueError(f"{f.label}: empty value")
        return text
    return convert


class _Issues:
    """Problems found in the clinical data: refused (merge, strict) or reported."""

    def __init__(self, report: ImportReport, refuse: bool):
        self.report, self.refuse = report, refuse
        self.problems: list[str] = []

    def unmapped(self, what: str, where: str = "") -> None:
        if self.refuse:
            self.problems.append(f"{where}: {what}" if where else what)
        else:
            self.report.not_imported[what] += 1

    def bad(self, where: str, message: str) -> None:
        """A value the forms engine refuses: always refused when merging."""
        if self.refuse:
            self.problems.append(f"{where}: {message}")
        else:
            self.report.not_imported[f"value refused by the forms engine: {where}: "
                                     f"{message}"] += 1


def parse_subject(el: etree._Element, m: _Mapping, issues: _Issues
                  ) -> oe.SubjectRecord | None:
    """One SubjectData -> a SubjectRecord in this study's ids (problems go to `issues`)."""
    key = (el.get("SubjectKey") or "").strip()
    if not key:
        issues.unmapped("SubjectData without a SubjectKey")
        return None
    site_ref = _child(el, "SiteRef")
    site = m.sites.get(site_ref.get("LocationOID", "")) if site_ref is not None else None
    if site is None:
        site = m.study_sites.get(el.getparent().get("StudyOID", "")) if \
            el.getparent() is not None else None
    site = site or m.default_site
    if site is None:
        issues.unmapped(f"site {site_ref.get('LocationOID') if site_ref is not None else '?'} "
                        "is not a site of this study", key)
        return None
    rec = oe.SubjectRecord(key, site)
    if m.placeholders:
        rec.fields = [oe.Cell(f.item_id, m.placeholders[f.attr],
                              [oe.Change(None, None, m.placeholders[f.attr],
                                         "placeholder: not in the ODM file")])
                      for f in oe.SUBJECT_FIELDS if f.attr in m.placeholders]
    if not m.dialect:
        rec.fields.append(oe.Cell("SITE", site))
    visits: dict[str, oe.VisitRecord] = {}
    if notes := len(_children(el, "Annotation")):
        issues.report.not_imported["subject annotations (queries and comments)"] += notes
    for se in _children(el, "StudyEventData"):
        eoid = se.get("StudyEventOID", "")
        em = m.events.get(eoid)
        if em is None:
            issues.unmapped(f"study event {eoid!r} is not defined", key)
            continue
        code = em.code_for(se.get("StudyEventRepeatKey"))
        where = f"{key}/{eoid}"
        if em.code is not None and code is None:
            issues.unmapped(f"repeat {se.get('StudyEventRepeatKey')} of study event {eoid}",
                            where)
            continue
        if len(_children(se, "Annotation")):
            issues.report.not_imported["visit annotations (queries and comments)"] += len(
                _children(se, "Annotation"))
        if code is not None and code not in visits:
            visits[code] = oe.VisitRecord(code)
        for fd in _children(se, "FormData"):
            _parse_form(fd, m, issues, rec, visits.get(code) if code else None,
                        f"{key}/{code or 'subject'}")
    rec.visits = list(visits.values())
    for v in rec.visits:
        if m.placeholders and not any(c.item_id == "VISSTAT" for c in v.fields) and v.forms:
            v.fields.append(oe.Cell("VISSTAT", "done", [oe.Change(
                None, None, "done", "the file has data for this visit")]))
    return rec


def _audit_of(el: etree._Element, m: _Mapping) -> tuple[datetime | None, str | None, str]:
    ar = _child(el, "AuditRecord")
    if ar is None:
        return None, None, ""
    ur = _child(ar, "UserRef")
    user_ref = ur.get("UserOID", "") if ur is not None else ""
    user = m.users.get(user_ref) or user_ref.removeprefix("USR.") or None
    at = _parse_datetime((_child(ar, "DateTimeStamp").text or "")
                         if _child(ar, "DateTimeStamp") is not None else None)
    reason_el = _child(ar, "ReasonForChange")
    reason = (reason_el.text or "").strip() if reason_el is not None else ""
    return (at, user, reason) if at is not None else (None, None, "")


def _parse_form(fd: etree._Element, m: _Mapping, issues: _Issues, rec: oe.SubjectRecord,
                visit: oe.VisitRecord | None, where: str) -> None:
    foid = fd.get("FormOID", "")
    form_id = m.forms.get(foid)
    if form_id is None:
        issues.unmapped(f"form {foid!r} is not defined (or could not be mapped)", where)
        return
    if fd.get("FormRepeatKey") not in (None, "", "1"):
        issues.unmapped(f"repeat {fd.get('FormRepeatKey')} of form {foid} (forms do not "
                        "repeat in crf-app)", where)
        return
    if form_id == "@subject":
        cells = rec.fields
    elif visit is None:
        issues.unmapped(f"form {foid} outside a visit", where)
        return
    elif form_id == "@visit":
        cells = visit.fields
    else:
        at, user, _ = _audit_of(fd, m)
        frec = oe.FormRecord(form_id, "", at, user)
        for ann in _children(fd, "Annotation"):
            flag = _child(ann, "Flag")
            value = _child(flag, "FlagValue") if flag is not None else None
            if value is not None and value.get("CodeListOID") == oe.FORM_STATUS_CODELIST:
                frec.status = (value.text or "").strip()
            else:
                issues.report.not_imported["query annotations (queries are not merged yet)"] \
                    += 1
        visit.forms.append(frec)
        cells = frec.cells
    where = f"{where}/{form_id.lstrip('@')}"
    by_key: dict[tuple[str, int], oe.Cell] = {}
    for c in cells:
        by_key[(c.item_id, c.row)] = c
    rows_seen: dict[str, int] = defaultdict(int)
    for ig in _children(fd, "ItemGroupData"):
        igoid = ig.get("ItemGroupOID", "")
        if (foid, igoid) not in m.groups:
            issues.unmapped(f"item group {igoid!r} is not part of form {foid}", where)
            continue
        section = m.groups[(foid, igoid)]
        repeat = ig.get("ItemGroupRepeatKey")
        row = 0
        if section is not None and section.repeating:
            if m.dialect and repeat and repeat.isdigit() and int(repeat) >= 1:
                row = int(repeat) - 1
            else:
                row = rows_seen[igoid]
                rows_seen[igoid] += 1
        elif repeat not in (None, "", "1"):
            issues.unmapped(f"repeat {repeat} of the non-repeating item group {igoid}", where)
            continue
        if notes := len(_children(ig, "Annotation")):
            issues.report.not_imported["item group annotations"] += notes
        for idata in _children(ig, "ItemData"):
            _parse_item(idata, m, issues, foid, row, by_key, cells, where)
        for tag in ("ItemDataAny", "ItemDataString", "ItemDataInteger", "ItemDataFloat",
                    "ItemDataDate", "ItemDataTime", "ItemDataDatetime", "ItemDataBoolean"):
            if len(_children(ig, tag)):
                issues.unmapped(f"typed {tag} elements (only ItemData is read)", where)


def _parse_item(idata: etree._Element, m: _Mapping, issues: _Issues, foid: str, row: int,
                by_key: dict[tuple[str, int], oe.Cell], cells: list[oe.Cell],
                where: str) -> None:
    ioid = idata.get("ItemOID", "")
    imap = m.items.get((foid, ioid))
    if imap is None:
        issues.unmapped(f"item {ioid!r} does not exist in form {foid}", where)
        return
    spot = f"{where}/{imap.item_id}" + (f"[{row + 1}]" if row else "")
    tt = idata.get("TransactionType")
    raw = idata.get("Value")
    new: str | None = None
    if tt != "Remove" and idata.get("IsNull") != "Yes" and raw is not None and raw.strip():
        try:
            new = imap.convert(raw)
        except ValueError as exc:
            issues.bad(spot, f"value {raw[:60]!r} refused: {exc}")
            return
    at, user, reason = _audit_of(idata, m)
    if notes := len(_children(idata, "Annotation")):
        issues.report.not_imported["query annotations (queries are not merged yet)"] += notes
    cell = by_key.get((imap.item_id, row))
    if cell is None:
        cell = by_key[(imap.item_id, row)] = oe.Cell(imap.item_id, None, row=row,
                                                     complete_history=m.complete_history)
        cells.append(cell)
    cell.value = new
    cell.history.append(oe.Change(at, user, new, reason))


# --- merging ------------------------------------------------------------------------------------
@dataclass
class _LocalEvent:
    id: int
    at: datetime
    user: str
    new: str | None

    @property
    def key(self) -> tuple[datetime | None, str | None, str | None]:
        return (self.at, self.user, self.new)


class _Target:
    """One stored value the merge may change (an item value, a subject or visit attribute)."""

    entity: str
    entity_id: str
    field: str
    row: int = 0
    visit_id: int | None = None
    form_instance_id: int | None = None

    def current(self) -> str | None:
        raise NotImplementedError

    def apply(self, value: str | None) -> None:
        raise NotImplementedError


class _ItemTarget(_Target):
    def __init__(self, s: Session, fi: FormInstance, store: dict[tuple[str, int], Any],
                 item_id: str, row: int, entity_id: str,
                 new_values: list[_NewValue] | None = None):
        self.s, self.fi, self.store, self.new_values = s, fi, store, new_values
        self.entity, self.entity_id, self.field, self.row = "item", entity_id, item_id, row
        self.visit_id, self.form_instance_id = fi.visit_id, fi.id

    def current(self) -> str | None:
        iv = self.store.get((self.field, self.row))
        return iv.value if iv is not None else None

    def apply(self, value: str | None) -> None:
        key = (self.field, self.row)
        iv = self.store.get(key)
        if value is None:
            if isinstance(iv, _NewValue):
                assert self.new_values is not None
                self.new_values.remove(iv)
                del self.store[key]
            elif iv is not None:
                self.s.delete(iv)
                del self.store[key]
        elif iv is None:
            if self.fi.id is None and self.new_values is not None:
                iv = _NewValue(self.fi, self.field, self.row, value)  # inserted in bulk
                self.new_values.append(iv)
            else:
                iv = ItemValue(form_instance_id=self.fi.id, item_id=self.field,
                               row_index=self.row, value=value)
                self.s.add(iv)
            self.store[key] = iv
        else:
            iv.value = value


def _typed(attr: str, text: str | None, *, visit: bool = False) -> Any:
    if attr in ("consent_date", "enrolled_on", "baseline_date", "status_date", "planned_date",
                "actual_date"):
        return date.fromisoformat(text) if text else None
    if attr == "birth_year":
        return int(text) if text else None
    if text is None:
        return "planned" if visit and attr == "status" else ""
    return text


class _AttrTarget(_Target):
    def __init__(self, obj: Subject | Visit, f: oe.RecordField, entity_id: str,
                 site_ids: dict[str, int]):
        self.obj, self.attr, self.site_ids = obj, f.attr, site_ids
        self.visit = isinstance(obj, Visit)
        self.entity = "visit" if self.visit else "subject"
        self.entity_id, self.field = entity_id, f.attr
        self.visit_id = obj.id if self.visit else None

    def current(self) -> str | None:
        if self.attr == "site":
            return next((c for c, i in self.site_ids.items() if i == self.obj.site_id), None)
        return oe.text_of(getattr(self.obj, self.attr))

    def apply(self, value: str | None) -> None:
        if self.attr == "site":
            if value is not None:
                self.obj.site_id = self.site_ids[value]
            return
        setattr(self.obj, self.attr, _typed(self.attr, value, visit=self.visit))


@dataclass
class _PendingEvent:
    occurred_at: datetime
    user_id: int | None
    username: str
    action: str
    entity: str
    entity_id: str
    field: str
    old_value: str | None
    new_value: str | None
    reason: str
    subject_id: int | None
    prev_hash: str = ""
    hash: str = ""


class _BulkAudit:
    """The audit writer's hash chain, inserted in bulk (an import records thousands of events).

    Same events and hashes as crf_app.storage.audit.AuditWriter (it uses its compute_hash);
    `flush()` inserts them in chain order, before anything else writes to the trail.
    """

    def __init__(self, s: Session, actor: Actor, now: datetime):
        self.s, self.actor, self.now = s, actor, now.astimezone(UTC)
        self.pending: list[_PendingEvent] = []
        self.last: str | None = None

    def record(self, action: str, entity: str, entity_id: object, *, field: str = "",
               old: str | None = None, new: str | None = None, reason: str = "",
               subject_id: int | None = None, at: datetime | None = None,
               actor: Actor | None = None) -> _PendingEvent:
        if self.last is None:
            self.s.flush()
            self.last = self.s.execute(select(AuditEvent.hash).order_by(AuditEvent.id.desc())
                                       .limit(1)).scalar() or GENESIS_HASH
        who = actor or self.actor
        ev = _PendingEvent((at or self.now).astimezone(UTC), who.user_id, who.username, action,
                           entity, str(entity_id), field, old, new, reason, subject_id)
        ev.prev_hash = self.last
        ev.hash = self.last = compute_hash(ev.prev_hash, ev)  # type: ignore[arg-type]
        self.pending.append(ev)
        return ev

    def flush(self) -> None:
        if self.pending:
            self.s.execute(insert(AuditEvent), [vars(ev) for ev in self.pending])
            self.pending.clear()


class _NewValue:
    """An item value of a form created by this merge, inserted in bulk with its subject."""

    __slots__ = ("fi", "item_id", "row", "value")

    def __init__(self, fi: FormInstance, item_id: str, row: int, value: str):
        self.fi, self.item_id, self.row, self.value = fi, item_id, row, value


class _Merger:
    """Writes SubjectRecords into the study, all in the caller's transaction."""

    def __init__(self, s: Session, *, study_id: int, protocol: Protocol, library: FormLibrary,
                 file_oid: str, actor: Actor, now: datetime, report: ImportReport,
                 issues: _Issues, allow_unknown_sex: bool = False):
        self.s, self.study_id, self.protocol, self.library = s, study_id, protocol, library
        self.file_oid, self.actor, self.now = file_oid, actor, now
        self.report, self.issues = report, issues
        self.allow_unknown_sex = allow_unknown_sex
        self.audit = _BulkAudit(s, actor, now)
        self.new_values: list[_NewValue] = []
        self.site_ids = {code: sid for code, sid in s.execute(
            select(Site.code, Site.id).where(Site.study_id == study_id))}
        self._conflicted: set[int] = set()
        self._changed = False
        self._pending = 0

    # -- audit helpers --
    def _record(self, t: _Target, old: str | None, new: str | None, *, at: datetime | None,
                user: str | None, reason: str, subject_id: int,
                action: str | None = None) -> _PendingEvent:
        why = f"imported from {self.file_oid}" + (f": {reason}" if reason else "")
        if at is None and not reason:
            why += " (the file has no audit record for this value)"
        original = user is not None and at is not None
        ev = self.audit.record(action or ("create" if old is None else "update"), t.entity,
                               t.entity_id, field=t.field, old=old, new=new, reason=why,
                               subject_id=subject_id, at=at if original else None,
                               actor=Actor(None, user) if original else None)
        self.report.events_recorded += 1
        return ev

    # -- the merge of one value --
    def merge_cell(self, t: _Target, cell: oe.Cell, local: list[_LocalEvent],
                   open_conflicts: list[MergeConflict], subject: Subject, *, fresh: bool,
                   initial: str | None = None) -> str:
        """Bring one value up to date; returns 'unchanged', 'applied', 'conflict' or 'kept'.

        The incoming history is matched with the local one by (time, user, new value). After
        the last change both know, if only the incoming side changed the value, its changes
        are applied (fast-forward) and recorded; if both did and they disagree, the local
        value stays and a MergeConflict is opened. A value the other side never changed
        under audit (a default, a placeholder) only fills a value that is empty here.
        """
        current = t.current()
        audited = [c for c in cell.history if c.at is not None]
        final = cell.value
        if not audited:
            reason = cell.history[-1].reason if cell.history else ""
            if fresh:
                if final != initial:
                    self._record(t, initial, final, at=None, user=None, reason=reason,
                                 subject_id=subject.id)
                t.apply(final)
                return "applied" if final != initial else "unchanged"
            if final == current:
                return "unchanged"
            if current is None and not local:
                self._record(t, None, final, at=None, user=None, reason=reason,
                             subject_id=subject.id)
                t.apply(final)
                return "applied"
            if local:
                return "kept"  # only this side changed it under audit
            return self._conflict(t, cell, None, current, local, open_conflicts, subject)
        in_keys = {c.key for c in audited}
        lpos = {e.key: i for i, e in enumerate(local)}
        ci, cl = -1, -1
        for i, ch in enumerate(audited):
            if ch.key in lpos:
                ci, cl = i, lpos[ch.key]
        new_in = audited[ci + 1:]
        if not new_in:
            return "unchanged"
        local_after = [e for e in local[cl + 1:] if e.key not in in_keys]
        if not local_after:
            prev = audited[ci].new if ci >= 0 else (initial if fresh else current)
            for ch in new_in:
                self._record(t, prev, ch.new, at=ch.at, user=ch.user, reason=ch.reason,
                             subject_id=subject.id)
                prev = ch.new
            if final != prev:  # an unaudited tail in the file
                self._record(t, prev, final, at=None, user=None, reason="",
                             subject_id=subject.id)
            t.apply(final)
            return "applied" if final != current or fresh else "unchanged"
        if final == current:
            return "unchanged"
        return self._conflict(t, cell, new_in[-1], current, local, open_conflicts, subject)

    def _conflict(self, t: _Target, cell: oe.Cell, incoming: oe.Change | None,
                  current: str | None, local: list[_LocalEvent],
                  open_conflicts: list[MergeConflict], subject: Subject) -> str:
        inc_at = incoming.at if incoming else None
        inc_user = incoming.user if incoming else None
        for c in open_conflicts:
            if (c.entity, c.entity_id, c.field) != (t.entity, t.entity_id, t.field):
                continue
            if (c.incoming_at, c.incoming_user, c.incoming_value) == (inc_at, inc_user,
                                                                      cell.value):
                return "conflict"  # already waiting for a data manager
            c.state = "superseded"
        last = local[-1] if local else None
        conflict = MergeConflict(
            subject_id=subject.id, visit_id=t.visit_id, form_instance_id=t.form_instance_id,
            entity=t.entity, entity_id=t.entity_id, field=t.field, row_index=t.row,
            local_value=current, local_user=last.user if last else None,
            local_at=last.at if last else None, incoming_value=cell.value,
            incoming_user=inc_user, incoming_at=inc_at,
            incoming_reason=incoming.reason if incoming else "", file_oid=self.file_oid,
            state="open", created_at=self.now)
        self.s.add(conflict)
        self.s.flush()
        open_conflicts.append(conflict)
        self.audit.record("create", "merge_conflict", conflict.id, field=t.field,
                          old=current, new=cell.value,
                          reason=f"{t.entity_id}: changed here and in {self.file_oid}; the "
                                 "local value is kept until a data manager resolves it",
                          subject_id=subject.id)
        self.report.events_recorded += 1
        self.report.conflicts.append(f"{t.entity_id}" + (f" {t.field}" if t.entity != "item"
                                                         else "")
                                     + f": here {current!r}, in the file {cell.value!r}")
        return "conflict"

    # -- subjects --
    def _check_field(self, f: oe.RecordField, value: str | None, where: str) -> bool:
        try:
            if value is None:
                if f.attr in ("site", "initials", "birth_year", "sex", "arm", "consent_date",
                              "enrolled_on", "status"):
                    raise ValueError("a value is required")
                return True
            typed = _typed(f.attr, value)
            if f.attr == "site" and value not in self.site_ids:
                raise ValueError(f"{value!r} is not a site of this study")
            if f.attr == "sex" and value not in SEXES and not (self.allow_unknown_sex
                                                               and value == "U"):
                raise ValueError(f"{value!r} is not F or M")
            if f.attr == "arm" and value not in {a.code for a in self.protocol.arms}:
                raise ValueError(f"{value!r} is not an arm of this study")
            if f.attr == "status" and value not in SubjectStatus.LABELS:
                raise ValueError(f"{value!r} is not a subject status")
            if f.attr == "initials" and len(value) > 4:
                raise ValueError("initials have at most 4 characters")
            del typed
        except ValueError as exc:
            self.issues.bad(f"{where}/{f.item_id}", str(exc))
            return False
        return True

    def merge_subject(self, rec: oe.SubjectRecord) -> None:
        s = self.s
        fields = {c.item_id: c for c in rec.fields}
        spec = {f.item_id: f for f in oe.SUBJECT_FIELDS}
        ok = all([self._check_field(spec[k], c.value, rec.key) for k, c in fields.items()])
        subj = s.execute(select(Subject).where(Subject.study_id == self.study_id,
                                               Subject.screening_number == rec.key)
                         ).scalar_one_or_none()
        if subj is None and not all(f.item_id in fields for f in oe.SUBJECT_FIELDS
                                    if f.attr in ("initials", "birth_year", "sex", "arm",
                                                  "consent_date", "enrolled_on", "status")):
            self.issues.unmapped("a new subject without its subject record (initials, year of "
                                 "birth, arm, consent…)", rec.key)
            return
        if not ok or (self.issues.problems and self.issues.refuse):
            return
        self._changed = False
        fresh = subj is None
        self._instances: dict[tuple[int, str], FormInstance] = {}
        self._stores: dict[int, dict[tuple[str, int], ItemValue]] = defaultdict(dict)
        if fresh:
            subj = self._create_subject(rec, fields)
            local: dict[tuple[str, str, str], list[_LocalEvent]] = {}
            conflicts: list[MergeConflict] = []
        else:
            local = self._local_events(subj.id)
            conflicts = list(s.execute(select(MergeConflict).where(
                MergeConflict.subject_id == subj.id, MergeConflict.state == "open")).scalars())
            for fi in s.execute(select(FormInstance).join(Visit).where(
                    Visit.subject_id == subj.id)).scalars():
                self._instances[(fi.visit_id, fi.form_id)] = fi
            for iv in s.execute(select(ItemValue).join(FormInstance).join(Visit).where(
                    Visit.subject_id == subj.id)).scalars():
                self._stores[iv.form_instance_id][(iv.item_id, iv.row_index)] = iv
        for f in oe.SUBJECT_FIELDS:
            cell = fields.get(f.item_id)
            if cell is None:
                continue
            t = _AttrTarget(subj, f, rec.key, self.site_ids)
            outcome = self.merge_cell(t, cell, local.get(("subject", rec.key, f.attr), []),
                                      conflicts, subj, fresh=fresh)
            if not fresh:
                self._count(outcome, field=True)
        visits = {v.visit_code: v for v in subj.visits}
        for vrec in rec.visits:
            visit = visits.get(vrec.code)
            if visit is None:
                self.issues.unmapped(f"visit {vrec.code!r} is not in the protocol", rec.key)
                continue
            self._merge_visit(subj, visit, vrec, local, conflicts, fresh)
        if subj.baseline_date is not None:
            for pv in schedule(self.protocol, subj.baseline_date):
                v = visits.get(pv.code)
                if v is not None:
                    v.window_start, v.window_end = pv.window_start, pv.window_end
        if fresh:
            self.report.subjects_added += 1
        elif self._changed:
            self.report.subjects_updated += 1
        else:
            self.report.subjects_unchanged += 1
        self.flush()
        self._pending += 1
        if self._pending >= 100:
            s.expunge_all()
            self._pending = 0

    def flush(self) -> None:
        """Write what is pending: ORM rows first (their ids), then values and audit in bulk."""
        self.s.flush()
        if self.new_values:
            self.s.execute(insert(ItemValue), [
                {"form_instance_id": v.fi.id, "item_id": v.item_id, "row_index": v.row,
                 "value": v.value} for v in self.new_values])
            self.new_values.clear()
        self.audit.flush()

    def _count(self, outcome: str, *, field: bool = False, removed: bool = False,
               added: bool = False) -> None:
        if outcome == "applied":
            self._changed = True
            if field:
                self.report.fields_changed += 1
            elif removed:
                self.report.values_removed += 1
            elif added:
                self.report.values_added += 1
            else:
                self.report.values_changed += 1
        elif outcome == "conflict":
            self._changed = True

    def _create_subject(self, rec: oe.SubjectRecord, fields: dict[str, oe.Cell]) -> Subject:
        values = {f.attr: _typed(f.attr, fields[f.item_id].value)
                  for f in oe.SUBJECT_FIELDS if f.item_id in fields and f.attr != "site"}
        baseline = values.get("baseline_date")
        subj = Subject(study_id=self.study_id, site_id=self.site_ids[rec.site],
                       screening_number=rec.key, initials=values["initials"],
                       birth_year=values["birth_year"], sex=values["sex"], arm=values["arm"],
                       consent_date=values["consent_date"], enrolled_on=values["enrolled_on"],
                       baseline_date=baseline, status=values["status"],
                       status_reason=values.get("status_reason") or "",
                       status_date=values.get("status_date"), metadata_version=1)
        self.s.add(subj)
        for pv in schedule(self.protocol, baseline):
            self.s.add(Visit(subject=subj, visit_code=pv.code, sequence=pv.sequence,
                             planned_date=pv.planned, window_start=pv.window_start,
                             window_end=pv.window_end, status="planned", deviation=""))
        self.s.flush()
        return subj

    def _local_events(self, subject_id: int) -> dict[tuple[str, str, str], list[_LocalEvent]]:
        out: dict[tuple[str, str, str], list[_LocalEvent]] = defaultdict(list)
        for row in self.s.execute(
                select(AuditEvent.id, AuditEvent.entity, AuditEvent.entity_id,
                       AuditEvent.field, AuditEvent.occurred_at, AuditEvent.username,
                       AuditEvent.new_value)
                .where(AuditEvent.subject_id == subject_id,
                       AuditEvent.entity.in_(("item", "subject", "visit")))
                .order_by(AuditEvent.id)):
            out[(row.entity, row.entity_id, row.field)].append(
                _LocalEvent(row.id, row.occurred_at, row.username, row.new_value))
        return out

    def _merge_visit(self, subj: Subject, visit: Visit, vrec: oe.VisitRecord, local: dict,
                     conflicts: list[MergeConflict], fresh: bool) -> None:
        entity_id = f"{subj.screening_number}/{visit.visit_code}"
        initial = {"status": "planned", "deviation": ""}
        for f in oe.VISIT_FIELDS:
            cell = next((c for c in vrec.fields if c.item_id == f.item_id), None)
            if cell is None:
                continue
            try:
                _typed(f.attr, cell.value, visit=True)
            except ValueError as exc:
                self.issues.bad(f"{entity_id}/{f.item_id}", str(exc))
                continue
            t = _AttrTarget(visit, f, entity_id, self.site_ids)
            outcome = self.merge_cell(t, cell, local.get(("visit", entity_id, f.attr), []),
                                      conflicts, subj, fresh=fresh, initial=initial.get(f.attr))
            if not fresh:
                self._count(outcome, field=True)
        allowed = set(self.protocol.visit(visit.visit_code).forms)
        for frec in vrec.forms:
            if frec.form_id not in allowed:
                self.issues.unmapped(f"form {frec.form_id!r} is not part of visit "
                                     f"{visit.visit_code}", entity_id)
                continue
            self._merge_form(subj, visit, frec, local, conflicts)

    def _merge_form(self, subj: Subject, visit: Visit, frec: oe.FormRecord, local: dict,
                    conflicts: list[MergeConflict]) -> None:
        s = self.s
        form = self.library.get(frec.form_id)
        label = f"{subj.screening_number}/{visit.visit_code}/{form.id}"
        problems = False
        for cell in frec.cells:
            if cell.item_id not in {i.id for i in form.items}:
                self.issues.unmapped(f"item {cell.item_id!r} is not in form {form.id}", label)
                problems = True
        if problems:
            return
        fi = self._instances.get((visit.id, form.id))
        new_form = fi is None
        if fi is None:
            fi = FormInstance(visit_id=visit.id, form_id=form.id, form_version=form.version,
                              status=frec.status or "in_progress", updated_at=frec.updated_at,
                              updated_by=frec.updated_by)
            s.add(fi)
            self._instances[(visit.id, form.id)] = fi
            self.report.forms_added += 1
            self._changed = True
            store: dict[tuple[str, int], ItemValue] = {}
        else:
            store = self._stores[fi.id]
        applied = conflicted = 0
        for cell in frec.cells:
            repeating = form.section_of(cell.item_id).repeating
            entity_id = oe.item_entity_id(subj.screening_number, visit.visit_code, form.id,
                                          cell.item_id, cell.row if repeating else None)
            t = _ItemTarget(s, fi, store, cell.item_id, cell.row if repeating else 0, entity_id,
                            self.new_values)
            before = t.current()
            outcome = self.merge_cell(t, cell, local.get(("item", entity_id, cell.item_id),
                                                         []), conflicts, subj, fresh=new_form)
            self._count(outcome, removed=outcome == "applied" and cell.value is None,
                        added=outcome == "applied" and before is None)
            applied += outcome == "applied"
            conflicted += outcome == "conflict"
        if not new_form and applied and not conflicted and frec.status and \
                frec.status != fi.status and (fi.updated_at is None or frec.updated_at is None
                                              or frec.updated_at >= fi.updated_at):
            original = frec.updated_by is not None and frec.updated_at is not None
            self.audit.record("update", "form", label, field="status", old=fi.status,
                              new=frec.status, reason=f"imported from {self.file_oid}",
                              subject_id=subj.id, at=frec.updated_at if original else None,
                              actor=Actor(None, frec.updated_by) if original and
                              frec.updated_by else None)
            self.report.events_recorded += 1
            fi.status, fi.updated_at, fi.updated_by = frec.status, frec.updated_at, \
                frec.updated_by
        if applied and not new_form:
            self._recompute(subj, visit, fi, form, store, label)
        elif applied:
            result = validate_form(form, unflatten(form, {k: v.value for k, v in store.items()}))
            for err in result.errors:
                self.report.warnings.append(f"{label}: {err.message}")

    def _recompute(self, subj: Subject, visit: Visit, fi: FormInstance, form: FormDef,
                   store: dict[tuple[str, int], ItemValue], label: str) -> None:
        """After a merge mixed local and incoming values: computed items and hard checks."""
        stored = {k: v.value for k, v in store.items()}
        result = validate_form(form, unflatten(form, stored))
        for err in result.errors:
            self.report.warnings.append(f"{label}: after the merge, {err.message}")
        computed = {k: v for k, v in flatten(form, result.computed).items()}
        for key, value in computed.items():
            if stored.get(key) == value:
                continue
            item_id, row = key
            repeating = form.section_of(item_id).repeating
            entity_id = oe.item_entity_id(subj.screening_number, visit.visit_code, form.id,
                                          item_id, row if repeating else None)
            t = _ItemTarget(self.s, fi, store, item_id, row, entity_id, self.new_values)
            self.audit.record("update" if key in stored else "create", "item", entity_id,
                              field=item_id, old=stored.get(key), new=value,
                              reason=f"recomputed after merging {self.file_oid}",
                              subject_id=subj.id)
            self.report.events_recorded += 1
            t.apply(value)


# --- merging a file into the open study --------------------------------------------------------
def _local_mapping(study: StudyHandle, admins: list[etree._Element]) -> _Mapping:
    library = form_library(study)
    events = {oe.SUBJECT_EVENT_OID: _EventMap(None)}
    events.update({oe.event_oid(v.code): _EventMap(v.code) for v in study.protocol.visits})
    forms = {oe.SUBJECT_FORM_OID: "@subject", oe.VISIT_FORM_OID: "@visit"}
    groups: dict[tuple[str, str], SectionDef | None] = {
        (oe.SUBJECT_FORM_OID, oe.SUBJECT_GROUP_OID): None,
        (oe.VISIT_FORM_OID, oe.VISIT_GROUP_OID): None}
    items: dict[tuple[str, str], _ItemMap] = {}
    for f in oe.SUBJECT_FIELDS:
        items[(oe.SUBJECT_FORM_OID, f.oid)] = _ItemMap(f.item_id, None, record_converter(f), f)
    for f in oe.VISIT_FIELDS:
        items[(oe.VISIT_FORM_OID, f.oid)] = _ItemMap(f.item_id, None, record_converter(f), f)
    for form in library.forms.values():
        foid = oe.form_oid(form.id)
        forms[foid] = form.id
        for section in form.sections:
            groups[(foid, oe.group_oid(form.id, section.id))] = section
        for item in form.items:
            items[(foid, oe.item_oid(form.id, item.id))] = _ItemMap(item.id, item,
                                                                   converter(item))
    return _Mapping(True, events, forms, groups, items, _users(admins),
                    {oe.site_oid(s.code): s.code for s in study.protocol.sites}, {}, None,
                    complete_history=True)


def _users(admins: list[etree._Element]) -> dict[str, str]:
    users = {}
    for admin in admins:
        for user in _children(admin, "User"):
            oid = user.get("OID", "")
            login = _child(user, "LoginName")
            users[oid] = (login.text or "").strip() if login is not None and login.text else \
                oid.removeprefix("USR.")
    return users


class _MergeHandler(_Handler):
    def __init__(self, ctx: UserContext, s: Session, path: Path, sha: str,
                 report: ImportReport, issues: _Issues):
        self.ctx, self.s, self.path, self.sha = ctx, s, path, sha
        self.report, self.issues = report, issues
        self.mapping: _Mapping | None = None
        self.merger: _Merger | None = None
        self.header_info: _Header | None = None

    def header(self, h: _Header) -> None:
        self.header_info = h
        if h.file_type != oe.TRANSACTIONAL:
            raise ImportRefused(f"{self.path.name} is a {h.file_type} file: only transactional "
                                "files (with their change history) can be merged into a study; "
                                "create a new study from it instead (import-odm --new-study); "
                                "nothing was imported")
        if h.source_system != oe.SOURCE_SYSTEM:
            raise ImportRefused(f"{self.path.name} was written by "
                                f"{h.source_system or 'an unnamed system'}, not crf-app: only "
                                "crf-app files of the same study can be merged; nothing was "
                                "imported")
        check_chain(self.s, h, self.sha, self.path)
        local = node_id(self.s)
        if local and h.originator == f"crf-app node {local}":
            raise ImportRefused(f"{self.path.name} was exported from this database; nothing "
                                "was imported")

    def metadata(self, studies: list[etree._Element], admins: list[etree._Element]) -> None:
        study = self.ctx.study
        oids = [st.get("OID") for st in studies]
        if oids and study.oid not in oids:
            raise ImportRefused(f"{self.path.name} is for study {', '.join(map(str, oids))}; "
                                f"this database holds study {study.oid}; nothing was imported")
        self.report.study_oid = study.oid
        self.mapping = _local_mapping(study, admins)
        self.merger = _Merger(self.s, study_id=study.study_id, protocol=study.protocol,
                              library=form_library(study), file_oid=self.report.file_oid,
                              actor=self.ctx.user.actor, now=self.ctx.now(),
                              report=self.report, issues=self.issues)

    def clinical(self, study_oid: str, mdv: str) -> None:
        study = self.ctx.study
        if study_oid != study.oid:
            raise ImportRefused(f"{self.path.name} holds clinical data of study {study_oid}; "
                                f"this database holds study {study.oid}; nothing was imported")
        if mdv != oe.mdv_oid(study.metadata_version):
            raise ImportRefused(f"{self.path.name} was written under metadata version {mdv}; "
                                f"this study runs {oe.mdv_oid(study.metadata_version)}; "
                                "nothing was imported")

    def subject(self, el: etree._Element) -> None:
        assert self.mapping is not None and self.merger is not None
        rec = parse_subject(el, self.mapping, self.issues)
        if rec is not None and not self.issues.problems:
            self.merger.merge_subject(rec)


def check_chain(s: Session, h: _Header, sha: str, path: Path) -> bool:
    """Refuse a gap, a replay or a fork in the FileOID/PriorFileOID chain.

    Returns True when this very file was already imported (and nothing follows it yet): the
    import is then a no-op.
    """
    same = s.execute(select(ImportedFile).where(ImportedFile.file_oid == h.file_oid)
                     ).scalar_one_or_none()
    if same is not None:
        if same.sha256 != sha:
            raise ImportRefused(f"{path.name}: a different file with the same FileOID "
                                f"{h.file_oid} was imported on {same.imported_at:%Y-%m-%d}; "
                                "this one is refused (replayed or altered); nothing was "
                                "imported")
        later = s.execute(select(ImportedFile.file_oid).where(
            ImportedFile.prior_file_oid == h.file_oid)).scalar()
        if later:
            raise ImportRefused(f"{path.name} ({h.file_oid}) is a replay: it was imported on "
                                f"{same.imported_at:%Y-%m-%d} and {later}, which follows it, "
                                "has been imported since; nothing was imported")
        return True
    if h.prior_file_oid:
        prior = s.execute(select(ImportedFile).where(
            ImportedFile.file_oid == h.prior_file_oid)).scalar_one_or_none()
        if prior is None:
            raise ImportRefused(f"{path.name} ({h.file_oid}) follows {h.prior_file_oid}, which "
                                "has not been imported here: a file is missing in between. "
                                "Import the files of that laptop in order; nothing was "
                                "imported")
        sibling = s.execute(select(ImportedFile.file_oid).where(
            ImportedFile.prior_file_oid == h.prior_file_oid)).scalar()
        if sibling:
            raise ImportRefused(f"{path.name} ({h.file_oid}) follows {h.prior_file_oid}, but "
                                f"{sibling} was already imported after it (a replay or a "
                                "laptop whose database was restored from a copy); nothing was "
                                "imported")
    elif h.originator:
        earlier = s.execute(select(ImportedFile.file_oid).where(
            ImportedFile.originator == h.originator).order_by(ImportedFile.id.desc())
        ).scalar()
        if earlier:
            raise ImportRefused(f"{path.name} ({h.file_oid}) starts a new chain, but files from "
                                f"the same laptop were imported already (last: {earlier}); "
                                "nothing was imported")
    return False


def import_odm(ctx: UserContext, path: Path, *, strict: bool = True,
               progress: Progress | None = None, cancelled: Cancelled | None = None
               ) -> ImportReport:
    """Merge a transactional crf-app ODM file of this study, all or nothing; audited.

    Merging is always strict (an unknown OID or a value the forms engine refuses refuses the
    whole file); `strict` is accepted for symmetry with `import_new_study`.
    """
    del strict
    ctx.require(Action.IMPORT)
    path = Path(path)
    report = ImportReport(str(path), "merge")
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    sha = file_sha256(path)
    issues = _Issues(report, refuse=True)
    with ctx.study.db.transaction() as s:
        handler = _MergeHandler(ctx, s, path, sha, report, issues)
        check_prolog(path)
        already = _already_imported(s, path, sha, report)
        if already:
            report.study_oid = ctx.study.oid
            return report
        stream_odm(path, handler, report, progress=progress, cancelled=cancelled)
        if issues.problems:
            raise ImportRefused(f"{path.name} cannot be merged; nothing was imported:",
                                issues.problems)
        if handler.merger is not None:
            handler.merger.flush()
        _finish(s, ctx.user.actor, ctx.now(), handler.header_info, sha, report)
    return report


def _already_imported(s: Session, path: Path, sha: str, report: ImportReport) -> bool:
    """A cheap look at the root element: the same file imported again changes nothing."""
    try:
        for _, el in etree.iterparse(str(path), events=("start",), resolve_entities=False,
                                     no_network=True, huge_tree=False, load_dtd=False):
            if el.tag != _q("ODM"):
                return False
            h = _Header(el.get("FileOID") or "", el.get("FileType") or "",
                        el.get("PriorFileOID") or None, el.get("SourceSystem") or "",
                        el.get("Originator") or "", None)
            break
        else:
            return False
    except etree.XMLSyntaxError:
        return False
    if not h.file_oid or h.file_type != oe.TRANSACTIONAL or h.source_system != oe.SOURCE_SYSTEM:
        return False  # the streaming pass refuses it with the precise reason
    if check_chain(s, h, sha, path):
        report.file_oid, report.file_type = h.file_oid, h.file_type
        report.prior_file_oid, report.source_system = h.prior_file_oid, h.source_system
        report.already_imported = True
        return True
    return False


def _finish(s: Session, actor: Actor, now: datetime, h: _Header | None, sha: str,
            report: ImportReport) -> None:
    assert h is not None
    summary = (f"{report.subjects_added} subjects added, {report.subjects_updated} updated; "
               f"{len(report.conflicts)} conflicts")
    AuditWriter(s, actor, now=now).record("import", "odm_file", h.file_oid, new=summary,
                                          reason=f"imported from {h.file_oid}")
    s.add(ImportedFile(file_oid=h.file_oid, prior_file_oid=h.prior_file_oid,
                       file_type=h.file_type, originator=h.originator,
                       source_system=h.source_system, imported_at=now,
                       imported_by=actor.username, sha256=sha, report=report.text()))


# --- conflicts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConflictRow:
    id: int
    subject: str
    site: str
    visit: str
    form: str
    field: str
    row: int
    local_value: str | None
    local_user: str | None
    local_at: datetime | None
    incoming_value: str | None
    incoming_user: str | None
    incoming_at: datetime | None
    file_oid: str
    state: str
    resolution: str | None
    resolved_by: str | None


def list_conflicts(ctx: UserContext, *, state: str | None = "open") -> list[ConflictRow]:
    """Merge conflicts (open ones by default), oldest first."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        q = (select(MergeConflict, Subject.screening_number, Site.code, Visit.visit_code,
                    FormInstance.form_id)
             .join(Subject, MergeConflict.subject_id == Subject.id)
             .join(Site, Subject.site_id == Site.id)
             .outerjoin(Visit, MergeConflict.visit_id == Visit.id)
             .outerjoin(FormInstance, MergeConflict.form_instance_id == FormInstance.id)
             .where(Subject.study_id == ctx.study.study_id).order_by(MergeConflict.id))
        if state is not None:
            q = q.where(MergeConflict.state == state)
        if ctx.user.site_code:
            q = q.where(Site.code == ctx.user.site_code)
        return [ConflictRow(c.id, sn, site, visit or "", form or "", c.field, c.row_index,
                            c.local_value, c.local_user, c.local_at, c.incoming_value,
                            c.incoming_user, c.incoming_at, c.file_oid, c.state, c.resolution,
                            c.resolved_by) for c, sn, site, visit, form in s.execute(q)]


def resolve_conflict(ctx: UserContext, conflict_id: int, choice: str, reason: str = "") -> None:
    """A data manager keeps the local value or takes the incoming one; audited.

    Either way the incoming change is recorded in the value's history (so the next exchange
    knows it was seen); choosing "local" then records the local value again, which the other
    laptop will receive as the newer change.
    """
    if choice not in ("local", "incoming"):
        raise ValidationFailed(FieldError("choice", "codelist",
                                          "Choose 'local' or 'incoming'"))
    ctx.require(Action.IMPORT)
    ctx.require(Action.CLOSE_QUERY)
    now = ctx.now()
    with ctx.study.db.transaction() as s:
        c = s.get(MergeConflict, conflict_id)
        if c is None:
            raise NotFound(f"merge conflict {conflict_id} does not exist")
        subj = s.get(Subject, c.subject_id)
        assert subj is not None
        if subj.study_id != ctx.study.study_id:
            raise NotFound(f"merge conflict {conflict_id} does not exist")
        if c.state != "open":
            raise ValidationFailed(FieldError("conflict", "state",
                                              f"Conflict {conflict_id} is already {c.state}"))
        site_ids = {code: sid for code, sid in s.execute(
            select(Site.code, Site.id).where(Site.study_id == subj.study_id))}
        target = _target_of(s, c, subj, site_ids, ctx)
        current = target.current()
        audit = AuditWriter(s, ctx.user.actor, now=now)
        note = f"merge conflict {c.id} resolved by {ctx.user.username}: " + (
            "incoming value chosen" if choice == "incoming" else "local value kept") + (
            f" — {reason.strip()}" if reason.strip() else "")
        audit.now = (c.incoming_at or now).astimezone(UTC)
        audit.actor = Actor(None, c.incoming_user) if c.incoming_user and c.incoming_at \
            else ctx.user.actor
        audit.record("update" if choice == "incoming" else "merge_rejected", target.entity,
                     target.entity_id, field=target.field, old=current, new=c.incoming_value,
                     reason=f"imported from {c.file_oid}"
                            + (f": {c.incoming_reason}" if c.incoming_reason else "")
                            + f" ({note})", subject_id=subj.id)
        audit.now, audit.actor = now, ctx.user.actor
        if choice == "incoming":
            target.apply(c.incoming_value)
        else:
            audit.record("update", target.entity, target.entity_id, field=target.field,
                         old=c.incoming_value, new=current, reason=note, subject_id=subj.id)
        ev = audit.record("resolve", "merge_conflict", c.id, field="resolution",
                          old="open", new=choice, reason=note, subject_id=subj.id)
        s.flush()
        if isinstance(target, _AttrTarget) and target.attr == "baseline_date" and \
                subj.baseline_date is not None:
            for pv in schedule(ctx.study.protocol, subj.baseline_date):
                for v in subj.visits:
                    if v.visit_code == pv.code:
                        v.window_start, v.window_end = pv.window_start, pv.window_end
        c.state, c.resolution = "resolved", choice
        c.resolved_by, c.resolved_at, c.resolution_event_id = ctx.user.username, now, ev.id


def _target_of(s: Session, c: MergeConflict, subj: Subject, site_ids: dict[str, int],
               ctx: UserContext) -> _Target:
    if c.entity == "item":
        fi = s.get(FormInstance, c.form_instance_id)
        if fi is None:
            raise NotFound(f"the form of merge conflict {c.id} no longer exists")
        store = {(v.item_id, v.row_index): v for v in s.execute(
            select(ItemValue).where(ItemValue.form_instance_id == fi.id)).scalars()}
        return _ItemTarget(s, fi, store, c.field, c.row_index, c.entity_id)
    spec = oe.SUBJECT_FIELDS if c.entity == "subject" else oe.VISIT_FIELDS
    f = next(x for x in spec if x.attr == c.field)
    obj: Subject | Visit | None = subj if c.entity == "subject" else s.get(Visit, c.visit_id)
    if obj is None:
        raise NotFound(f"the visit of merge conflict {c.id} no longer exists")
    return _AttrTarget(obj, f, c.entity_id, site_ids)



# --- a new study from any ODM file (crf-app, OpenClinica, REDCap…) ------------------------------
IMPORTED = "IMPORTED"
_CODE_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def _code(raw: str, limit: int = 40) -> str:
    """A protocol code (study, site, visit, arm): letters, digits, '_' and '-'."""
    code = _CODE_CHARS.sub("-", raw.strip()).strip("-") or "X"
    return code[:limit]


def _ident(raw: str, *, upper: bool, limit: int) -> str:
    text = re.sub(r"[^A-Za-z0-9_]+", "_", raw.strip()).strip("_")
    text = text.upper() if upper else text.lower()
    if not text or not text[0].isalpha():
        text = ("I_" if upper else "x_") + text
    return text[:limit]


def _unique(candidate: str, used: set[str], limit: int) -> str:
    out, n = candidate, 2
    while out in used:
        suffix = f"_{n}"
        out = candidate[:limit - len(suffix)] + suffix
        n += 1
    used.add(out)
    return out


@dataclass
class _Scan:
    """What the first pass over the clinical data learns (the metadata needs it)."""

    subjects: int = 0
    repeats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    decimals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lowest: dict[str, float] = field(default_factory=dict)
    highest: dict[str, float] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    locations: set[str] = field(default_factory=set)
    clinical_studies: set[str] = field(default_factory=set)
    unsited: int = 0


class _ScanHandler(_Handler):
    def __init__(self) -> None:
        self.scan = _Scan()
        self.header_info: _Header | None = None
        self.studies: list[etree._Element] = []
        self.admins: list[etree._Element] = []

    def header(self, h: _Header) -> None:
        self.header_info = h

    def metadata(self, studies: list[etree._Element], admins: list[etree._Element]) -> None:
        self.studies, self.admins = list(studies), list(admins)

    def clinical(self, study_oid: str, mdv_oid: str) -> None:
        self.scan.clinical_studies.add(study_oid)

    def subject(self, el: etree._Element) -> None:
        sc = self.scan
        sc.subjects += 1
        site_ref = _child(el, "SiteRef")
        if site_ref is not None:
            sc.locations.add(site_ref.get("LocationOID", ""))
        else:
            sc.unsited += 1
        for se in _children(el, "StudyEventData"):
            key = se.get("StudyEventRepeatKey") or "1"
            oid = se.get("StudyEventOID", "")
            if key.isdigit():
                sc.repeats[oid] = max(sc.repeats[oid], int(key))
            for idata in se.iter(_q("ItemData")):
                value = (idata.get("Value") or "").strip()
                oid = idata.get("ItemOID", "")
                sc.lengths[oid] = max(sc.lengths[oid], len(value))
                if re.fullmatch(r"[+-]?\d*\.\d+", value):
                    sc.decimals[oid] = max(sc.decimals[oid], len(value.split(".")[1]))
                if re.fullmatch(r"[+-]?\d+(\.\d*)?|[+-]?\.\d+", value):
                    number = float(value)
                    sc.lowest[oid] = min(sc.lowest.get(oid, number), number)
                    sc.highest[oid] = max(sc.highest.get(oid, number), number)


@dataclass
class _Defs:
    """The definitions of one MetaDataVersion (with those it includes), indexed by OID."""

    events: dict[str, etree._Element] = field(default_factory=dict)
    forms: dict[str, etree._Element] = field(default_factory=dict)
    groups: dict[str, etree._Element] = field(default_factory=dict)
    items: dict[str, etree._Element] = field(default_factory=dict)
    codelists: dict[str, etree._Element] = field(default_factory=dict)
    methods: dict[str, etree._Element] = field(default_factory=dict)
    conditions: dict[str, etree._Element] = field(default_factory=dict)
    event_order: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)


def _index_defs(studies: list[etree._Element], study: etree._Element,
                mdv: etree._Element, depth: int = 0) -> _Defs:
    defs = _Defs()
    include = _child(mdv, "Include")
    if include is not None and depth < 5:
        for st in studies:
            if st.get("OID") == include.get("StudyOID"):
                for other in _children(st, "MetaDataVersion"):
                    if other.get("OID") == include.get("MetaDataVersionOID"):
                        defs = _index_defs(studies, st, other, depth + 1)
    bd = _child(study, "BasicDefinitions")
    for mu in _children(bd, "MeasurementUnit") if bd is not None else []:
        defs.units[mu.get("OID", "")] = translated(mu, "Symbol") or mu.get("Name", "")
    for tag, target in (("StudyEventDef", defs.events), ("FormDef", defs.forms),
                        ("ItemGroupDef", defs.groups), ("ItemDef", defs.items),
                        ("CodeList", defs.codelists), ("MethodDef", defs.methods),
                        ("ConditionDef", defs.conditions)):
        for el in _children(mdv, tag):
            target[el.get("OID", "")] = el
    protocol = _child(mdv, "Protocol")
    if protocol is not None:
        refs = _children(protocol, "StudyEventRef")
        refs.sort(key=lambda r: int(r.get("OrderNumber", "0") or 0)
                  if (r.get("OrderNumber") or "0").isdigit() else 0)
        defs.event_order = [r.get("StudyEventOID", "") for r in refs]
    if not defs.event_order:
        defs.event_order = list(defs.events)
    return defs


def _alias(el: etree._Element, context: str) -> str | None:
    for a in _children(el, "Alias"):
        if a.get("Context") == context:
            return a.get("Name")
    return None


def _crfapp_expression(defs: dict[str, etree._Element], oid: str | None) -> str | None:
    el = defs.get(oid or "")
    if el is None:
        return None
    for fe in _children(el, "FormalExpression"):
        if fe.get("Context") == oe.EXPRESSION_CONTEXT and fe.text:
            return fe.text.strip()
    return None


class _StudyBuilder:
    """ODM metadata -> a Protocol, a FormLibrary and the OID mapping of the clinical data."""

    def __init__(self, path: Path, header: _Header, studies: list[etree._Element],
                 admins: list[etree._Element], scan: _Scan, report: ImportReport):
        self.path, self.h, self.studies, self.admins = path, header, studies, admins
        self.scan, self.report = scan, report
        self.dialect = header.source_system == oe.SOURCE_SYSTEM
        if not studies:
            raise ImportRefused(f"{path.name} has no Study element (no metadata): a new study "
                                "cannot be created from it; nothing was imported")
        self.main = self._main_study()
        mdvs = _children(self.main, "MetaDataVersion")
        if not mdvs:
            raise ImportRefused(f"{path.name}: study {self.main.get('OID')} has no "
                                "MetaDataVersion (no forms); nothing was imported")
        self.mdv = mdvs[-1]
        self.defs = _index_defs(studies, self.main, self.mdv)
        self.note = report.notes.append

    def _main_study(self) -> etree._Element:
        included = {inc.get("StudyOID") for st in self.studies
                    for mdv in _children(st, "MetaDataVersion")
                    for inc in _children(mdv, "Include")}
        for st in self.studies:
            if st.get("OID") in included:
                return st
        return self.studies[0]

    # -- items --
    def _codes(self, cl: etree._Element) -> list[dict[str, str]] | None:
        codes = []
        for cli in _children(cl, "CodeListItem") + _children(cl, "EnumeratedItem"):
            code = (cli.get("CodedValue") or "").strip()
            if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,40}", code):
                return None
            label = _clean(translated(cli, "Decode")) or code
            codes.append({"code": code, "label": label[:300]})
        if not codes or len({c["code"] for c in codes}) != len(codes):
            return None
        return codes

    def _item(self, form_id: str, idef: etree._Element, iref: etree._Element,
              used: set[str]) -> tuple[ItemDef, bool] | None:
        oid = idef.get("OID", "")
        name = idef.get("Name") or oid
        where = f"{form_id}: item {oid}"
        if self.dialect and re.fullmatch(r"[A-Z][A-Z0-9_]{0,31}", name) and name not in used:
            item_id = name
            used.add(name)
        else:
            base = _ident(name, upper=True, limit=32)
            item_id = _unique(base, used, 32)
        label = self._text(translated(idef, "Question")) or _clean(idef.get("Comment", "")) \
            or name
        help_text = self._text(translated(idef, "Description"))
        if len(label) > 200:
            help_text = (label + (" — " + help_text if help_text else ""))
            label = label[:199] + "…"
        kw: dict[str, Any] = {"id": item_id, "label": label, "help": help_text,
                              "required": iref.get("Mandatory") == "Yes"}
        dtype = idef.get("DataType", "text")
        booleans = False
        ref = _child(idef, "CodeListRef")
        cl = self.defs.codelists.get(ref.get("CodeListOID", "")) if ref is not None else None
        if self.dialect and ref is not None and ref.get("CodeListOID") == "CL.YES_NO":
            kw["type"] = "yes_no"
        elif dtype == "boolean":
            kw["type"] = "yes_no"
            booleans = True
            self._type_note("boolean items became yes/no items (1/true → Y, 0/false → N)")
        elif cl is not None and (codes := self._codes(cl)) is not None:
            kw["type"] = "multi_choice" if (self.dialect and dtype == "string") else "choice"
            kw["codelist"] = codes
        else:
            if cl is not None:
                self.note(f"{where}: code list {cl.get('OID')} has codes crf-app cannot store "
                          "(spaces or other characters, or duplicates); the item is kept as "
                          f"{'text' if dtype in ('text', 'string') else dtype}")
            kw.update(self._base_type(dtype, idef, where))
        self._numeric_extras(kw, idef, where)
        if self.dialect:
            compute = _crfapp_expression(self.defs.methods, iref.get("MethodOID"))
            if compute:
                kw["compute"] = compute
                kw["required"] = False
            cond = _crfapp_expression(self.defs.conditions,
                                      iref.get("CollectionExceptionConditionOID"))
            if cond and cond.startswith("not (") and cond.endswith(")"):
                kw["show_if"] = cond[5:-1]
        else:
            for attr, what in (("MethodOID", "computation method"),
                               ("CollectionExceptionConditionOID", "skip condition")):
                if iref.get(attr):
                    self.note(f"{where}: {what} {iref.get(attr)} not imported (its "
                              "expression language is not crf-app's); values are imported as "
                              "they are")
        return self._validated(kw, where, booleans)

    def _text(self, text: str) -> str:
        """Labels and help: crf-app's own files verbatim, others without HTML markup."""
        return text.strip() if self.dialect else _clean(text)

    def _type_note(self, text: str) -> None:
        if text not in self.report.notes:
            self.note(text)

    def _base_type(self, dtype: str, idef: etree._Element, where: str) -> dict[str, Any]:
        oid = idef.get("OID", "")
        simple = {"integer": "integer", "date": "date", "partialDate": "partial_date",
                  "time": "time", "datetime": "datetime"}
        if dtype in simple:
            return {"type": simple[dtype]}
        if dtype in ("float", "double"):
            sd = idef.get("SignificantDigits")
            declared = int(sd) if sd and sd.isdigit() else None
            seen = self.scan.decimals.get(oid, 0)
            precision = max(declared or 0, seen)
            if declared is None and not seen:
                precision = 2
                self.note(f"{where}: no SignificantDigits and no data: 2 decimals assumed")
            elif declared is not None and seen > declared:
                self.note(f"{where}: the data have {seen} decimals, more than the "
                          f"SignificantDigits {declared}: precision raised to {min(seen, 6)}")
            if precision > 6:
                self.note(f"{where}: more than 6 decimals: values are refused beyond 6")
            return {"type": "decimal", "precision": min(precision, 6)}
        if dtype not in ("text", "string"):
            self._type_note(f"items of ODM type {dtype} are imported as text")
        length = idef.get("Length")
        limit = int(length) if length and length.isdigit() else 200
        limit = max(limit, self.scan.lengths.get(oid, 0), 1)
        if limit > 4000:
            self.note(f"{where}: text longer than 4000 characters is refused (Length {limit})")
        return {"type": "text", "max_length": min(limit, 4000)}

    def _numeric_extras(self, kw: dict[str, Any], idef: etree._Element, where: str) -> None:
        ref = _child(idef, "MeasurementUnitRef")
        if ref is not None:
            unit = self.defs.units.get(ref.get("MeasurementUnitOID", ""), "")
            if kw["type"] in ("integer", "decimal") and unit:
                kw["unit"] = unit[:30]
            else:
                self.note(f"{where}: unit {unit or ref.get('MeasurementUnitOID')!r} dropped "
                          f"(crf-app keeps units on numbers only, not on a {kw['type']} item)")
        checks = _children(idef, "RangeCheck")
        if not checks:
            return
        if kw["type"] not in ("integer", "decimal"):
            self.note(f"{where}: {len(checks)} range checks on a {kw['type']} item not "
                      "imported")
            return
        limits: dict[str, dict[str, float]] = {}
        for rc in checks:
            comp, values = rc.get("Comparator"), _children(rc, "CheckValue")
            kind = "soft" if rc.get("SoftHard") == "Soft" else "hard"
            try:
                value = float((values[0].text or "").strip()) if len(values) == 1 else None
            except ValueError:
                value = None
            if comp not in ("GE", "GT", "LE", "LT") or value is None or \
                    _child(rc, "FormalExpression") is not None:
                self.note(f"{where}: range check {comp or 'expression'} not imported (only "
                          "GE/GT/LE/LT with one value map onto limits)")
                continue
            if comp in ("GT", "LT"):
                if kw["type"] == "integer":
                    value += 1 if comp == "GT" else -1
                else:
                    self.note(f"{where}: range check {comp} {value:g} imported as "
                              f"{'≥' if comp == 'GT' else '≤'} (crf-app limits include the "
                              "bound)")
            end = "min" if comp in ("GE", "GT") else "max"
            limits.setdefault(kind, {})[end] = value
        oid = idef.get("OID", "")
        hard = limits.get("hard", {})
        low, high = self.scan.lowest.get(oid), self.scan.highest.get(oid)
        if (low is not None and "min" in hard and low < hard["min"]) or \
                (high is not None and "max" in hard and high > hard["max"]):
            self.note(f"{where}: the data hold values outside its hard limits "
                      f"({low:g}–{high:g}): the limits were imported as soft limits")
            soft = limits.setdefault("soft", {})
            for end, value in hard.items():
                soft.setdefault(end, value)
            limits.pop("hard")
        for kind, lim in limits.items():
            kw[kind] = lim
        flag = _alias(idef, "crf-app:soft_flag") if self.dialect else None
        if flag and "soft" in kw:
            kw["soft"]["flag"] = flag

    def _validated(self, kw: dict[str, Any], where: str, booleans: bool
                   ) -> tuple[ItemDef, bool] | None:
        attempts = [dict(kw)]
        for drop in (("soft",), ("hard",), ("unit",), ("compute", "show_if")):
            if any(k in attempts[-1] for k in drop):
                nxt = {k: v for k, v in attempts[-1].items() if k not in drop}
                attempts.append(nxt)
        attempts.append({"id": kw["id"], "label": kw["label"], "help": kw.get("help", ""),
                         "type": "text", "max_length": 4000})
        first_error = ""
        for i, attempt in enumerate(attempts):
            try:
                item = ItemDef.model_validate(attempt)
            except ValidationError as exc:
                first_error = first_error or "; ".join(
                    e["msg"].removeprefix("Value error, ") for e in exc.errors())
                continue
            if i:
                dropped = sorted(set(kw) - set(attempt))
                self.note(f"{where}: {', '.join(dropped) or 'type'} dropped "
                          f"({first_error})" + (" — kept as text" if attempt["type"] == "text"
                                                and kw["type"] != "text" else ""))
            return item, booleans and item.type == "yes_no"
        self.note(f"{where}: not importable ({first_error})")
        return None

    # -- forms --
    def build_forms(self) -> tuple[dict[str, FormDef], dict[str, str], dict, dict]:
        forms: dict[str, FormDef] = {}
        form_ids: dict[str, str] = {}
        groups: dict[tuple[str, str], SectionDef | None] = {}
        items: dict[tuple[str, str], _ItemMap] = {}
        used_forms: set[str] = set()
        for foid, fdef in self.defs.forms.items():
            if self.dialect and foid in (oe.SUBJECT_FORM_OID, oe.VISIT_FORM_OID):
                continue
            built = self._form(foid, fdef, used_forms)
            if built is None:
                continue
            form, section_of_group, item_maps = built
            forms[form.id] = form
            form_ids[foid] = form.id
            for igoid, sid in section_of_group.items():
                groups[(foid, igoid)] = form.section(sid)
            for (ioid, item_id), booleans in item_maps.items():
                item = form.item(item_id)
                items[(foid, ioid)] = _ItemMap(item_id, item, converter(item, booleans))
        return forms, form_ids, groups, items

    def _form(self, foid: str, fdef: etree._Element, used_forms: set[str]):
        name = fdef.get("Name") or foid
        if self.dialect and foid.startswith("F.") and \
                re.fullmatch(r"[a-z][a-z0-9_]{0,39}", foid[2:]) and foid[2:] not in used_forms:
            form_id = foid[2:]
            used_forms.add(form_id)
        else:
            form_id = _unique(_ident(foid, upper=False, limit=40), used_forms, 40)
        if fdef.get("Repeating") == "Yes":
            self.note(f"form {foid}: repeating form imported as a single form (only its first "
                      "repeat can be stored)")
        sections: list[dict[str, Any]] = []
        section_of_group: dict[str, str] = {}
        item_maps: dict[tuple[str, str], bool] = {}
        used_sections: set[str] = set()
        used_items: set[str] = set()
        for igref in _children(fdef, "ItemGroupRef"):
            igoid = igref.get("ItemGroupOID", "")
            igdef = self.defs.groups.get(igoid)
            if igdef is None:
                self.note(f"form {foid}: item group {igoid} is not defined; skipped")
                continue
            raw_sid = igoid.split(".", 2)[2] if self.dialect and igoid.count(".") >= 2 \
                else igoid
            sid = _unique(_ident(raw_sid, upper=False, limit=40), used_sections, 40)
            section_items = []
            for iref in _children(igdef, "ItemRef"):
                ioid = iref.get("ItemOID", "")
                idef = self.defs.items.get(ioid)
                if idef is None:
                    self.note(f"form {foid}: item {ioid} is not defined; skipped")
                    continue
                if any(k[0] == ioid for k in item_maps):
                    self.note(f"form {foid}: item {ioid} appears twice; only its first "
                              "appearance is kept")
                    continue
                built = self._item(form_id, idef, iref, used_items)
                if built is None:
                    continue
                item, booleans = built
                section_items.append(item.model_dump(mode="json", exclude_defaults=True))
                item_maps[(ioid, item.id)] = booleans
            if not section_items:
                self.note(f"form {foid}: item group {igoid} has no importable item; skipped")
                continue
            section: dict[str, Any] = {"id": sid, "title": self._text(igdef.get("Name", ""))
                                       or sid, "items": section_items}
            section_help = self._text(translated(igdef, "Description"))
            if section_help:
                section["help"] = section_help
            if igdef.get("Repeating") == "Yes":
                section["repeating"] = True
                max_rows = _alias(igdef, "crf-app:max_rows")
                if max_rows and max_rows.isdigit():
                    section["max_rows"] = int(max_rows)
            sections.append(section)
            section_of_group[igoid] = sid
        if not sections:
            self.note(f"form {foid} ({name}) has no importable item; not imported")
            return None
        version = _alias(fdef, oe.ALIAS_FORM_VERSION) if self.dialect else None
        data = {"id": form_id, "version": int(version) if version and version.isdigit() else 1,
                "title": self._text(name) or form_id, "description": self._text(translated(
                    fdef, "Description")), "sections": sections}
        try:
            return FormDef.model_validate(data), section_of_group, item_maps
        except ValidationError as exc:
            for section in sections:
                for item in section["items"]:
                    item.pop("compute", None)
                    item.pop("show_if", None)
            try:
                form = FormDef.model_validate(data)
            except ValidationError:
                self.note(f"form {foid}: not importable ({exc.errors()[0]['msg']})")
                return None
            self.note(f"form {foid}: computed items and skip conditions dropped "
                      f"({exc.errors()[0]['msg']})")
            return form, section_of_group, item_maps

    # -- protocol --
    def build(self) -> tuple[Protocol, FormLibrary, _Mapping]:
        forms, form_ids, groups, items = self.build_forms()
        if not forms:
            raise ImportRefused(f"{self.path.name}: no form could be mapped; nothing was "
                                "imported", self.report.notes)
        visits, events = self._visits(form_ids, forms)
        sites, location_sites, study_sites, default_site = self._sites()
        arms = self._arms()
        study_oid = self.main.get("OID", "")
        gv = _child(self.main, "GlobalVariables")
        title = _clean(gv.findtext(_q("StudyName")) or "") if gv is not None else ""
        number = _clean(gv.findtext(_q("ProtocolName")) or "") if gv is not None else ""
        version = "imported"
        if self.dialect and (self.mdv.get("Description") or "").startswith("Protocol "):
            version = self.mdv.get("Description", "")[9:] or version
        data = {"study_id": _code(study_oid), "title": title or study_oid,
                "protocol_number": number or study_oid, "protocol_version": version,
                "sponsor": "", "sites": sites, "arms": arms, "visits": visits,
                "regimens": [{"id": "NONE", "indication": "Not recorded in the imported ODM "
                              "file (placeholder)", "dose_mg_per_instillation":
                              {"min": 1, "max": 1}, "instillations_per_day": {"min": 1, "max": 1},
                              "course_days": {"min": 1, "max": 1}}]}
        if data["study_id"] != study_oid:
            self.note(f"study OID {study_oid!r} stored as {data['study_id']!r}")
        self.note("the protocol has no dosing regimen in ODM: a placeholder regimen NONE was "
                  "created; do not log doses against it")
        try:
            protocol = Protocol.model_validate(data)
        except ValidationError as exc:
            raise ImportRefused(f"{self.path.name}: the study's protocol cannot be built: "
                                f"{exc.errors()[0]['msg']}; nothing was imported") from None
        library = FormLibrary(forms=forms)
        if self.dialect:
            forms_map = {**form_ids, oe.SUBJECT_FORM_OID: "@subject",
                         oe.VISIT_FORM_OID: "@visit"}
            groups[(oe.SUBJECT_FORM_OID, oe.SUBJECT_GROUP_OID)] = None
            groups[(oe.VISIT_FORM_OID, oe.VISIT_GROUP_OID)] = None
            for f in oe.SUBJECT_FIELDS:
                items[(oe.SUBJECT_FORM_OID, f.oid)] = _ItemMap(f.item_id, None,
                                                               record_converter(f), f)
            for f in oe.VISIT_FIELDS:
                items[(oe.VISIT_FORM_OID, f.oid)] = _ItemMap(f.item_id, None,
                                                             record_converter(f), f)
            events[oe.SUBJECT_EVENT_OID] = _EventMap(None)
            placeholders: dict[str, str] = {}
            self.note("edit checks (cross-item checks) travel in no ODM element: they were "
                      "not imported; load the form files to restore them")
        else:
            forms_map = form_ids
            start = (self.h.created or datetime.now(UTC)).date().isoformat()
            placeholders = {"initials": "XX", "birth_year": "1900", "sex": "U",
                            "arm": IMPORTED, "consent_date": start, "enrolled_on": start,
                            "status": SubjectStatus.ON_STUDY}
            self.note("subjects: screening number from SubjectKey; ODM has no initials, year "
                      f"of birth, sex, arm or consent date: placeholders XX, 1900, U, "
                      f"{IMPORTED}, {start} (the file's date) — correct them from the source")
        mapping = _Mapping(self.dialect, events, forms_map, groups, items, _users(self.admins),
                           location_sites, study_sites, default_site,
                           complete_history=self.dialect and self.h.file_type ==
                           oe.TRANSACTIONAL, placeholders=placeholders)
        return protocol, library, mapping

    def _visits(self, form_ids: dict[str, str], forms: dict[str, FormDef]
                ) -> tuple[list[dict[str, Any]], dict[str, _EventMap]]:
        visits: list[dict[str, Any]] = []
        events: dict[str, _EventMap] = {}
        used: set[str] = set()
        day = 0
        for eoid in self.defs.event_order:
            if self.dialect and eoid == oe.SUBJECT_EVENT_OID:
                continue
            sed = self.defs.events.get(eoid)
            if sed is None:
                self.note(f"study event {eoid} is referenced by the protocol but not defined")
                continue
            raw = eoid[3:] if self.dialect and eoid.startswith("SE.") else eoid
            code = _unique(_code(raw), used, 40)
            refs = _children(sed, "FormRef")
            visit_forms = list(dict.fromkeys(form_ids[r.get("FormOID", "")] for r in refs
                                             if r.get("FormOID", "") in form_ids))
            name = _clean(sed.get("Name", "")) or code
            window = {"before": 0, "after": 0}
            alias_day = _alias(sed, oe.ALIAS_DAY) if self.dialect else None
            day = int(alias_day) if alias_day and re.fullmatch(r"-?\d+", alias_day) and \
                int(alias_day) >= day else day + 1
            alias_window = _alias(sed, oe.ALIAS_WINDOW) if self.dialect else None
            if alias_window and (m := re.fullmatch(r"-(\d+)/\+(\d+)", alias_window)):
                window = {"before": int(m.group(1)), "after": int(m.group(2))}
            visits.append({"code": code, "name": name, "day": day, "window": window,
                           "forms": visit_forms})
            em = _EventMap(code)
            events[eoid] = em
            if sed.get("Repeating") == "Yes":
                for k in range(2, self.scan.repeats.get(eoid, 1) + 1):
                    day += 1
                    rcode = _unique(_code(f"{code[:34]}-{k}"), used, 40)
                    visits.append({"code": rcode, "name": f"{name} ({k})", "day": day,
                                   "window": {"before": 0, "after": 0}, "forms": visit_forms})
                    em.repeating_codes[str(k)] = rcode
                most = self.scan.repeats.get(eoid, 1)
                if most > 1:
                    self.note(f"repeating study event {eoid}: {most} occurrences became "
                              f"visits {code} … {em.repeating_codes[str(most)]}")
        if not visits:
            visits.append({"code": "V1", "name": "Imported visit", "day": 1,
                           "window": {"before": 0, "after": 0}, "forms": list(forms)})
            self.note("the file defines no study events: one visit V1 holds every form")
            events = defaultdict(lambda: _EventMap("V1"))
        else:
            if not self.dialect:
                self.note("visit days and windows are not in ODM 1.3: visits follow the "
                          "protocol order (day 1, 2, …) with no window")
            scheduled = {f for v in visits for f in v["forms"]}
            for form_id in forms:
                if form_id not in scheduled:
                    self.note(f"form {form_id} is scheduled in no visit")
        return visits, events

    def _sites(self) -> tuple[list[dict[str, str]], dict[str, str], dict[str, str], str | None]:
        sites: dict[str, str] = {}
        locations: dict[str, str] = {}
        study_sites: dict[str, str] = {}
        main_oid = self.main.get("OID", "")
        for admin in self.admins:
            for loc in _children(admin, "Location"):
                oid = loc.get("OID", "")
                raw = oid[4:] if self.dialect and oid.startswith("LOC.") else oid
                code = _code(raw)
                sites.setdefault(code, _clean(loc.get("Name", "")) or code)
                locations[oid] = code
        for st in self.studies:
            if st is self.main:
                continue
            if any(inc.get("StudyOID") == main_oid for mdv in _children(st, "MetaDataVersion")
                   for inc in _children(mdv, "Include")):
                code = _code(st.get("OID", ""))
                gv = _child(st, "GlobalVariables")
                name = _clean(gv.findtext(_q("StudyName")) or "") if gv is not None else ""
                sites.setdefault(code, name or code)
                study_sites[st.get("OID", "")] = code
        for oid in self.scan.locations:
            if oid and oid not in locations:
                code = _code(oid)
                sites.setdefault(code, code)
                locations[oid] = code
        needs_default = not sites or (self.scan.unsited and any(
            s not in study_sites for s in self.scan.clinical_studies))
        default = None
        if len(sites) == 1 and not study_sites:
            default = next(iter(sites))
        elif needs_default:
            sites.setdefault(IMPORTED, "Imported subjects (no site in the file)")
            default = IMPORTED
            self.note(f"subjects without a site in the file were placed at site {IMPORTED}"
                      if self.scan.subjects else f"the file names no site: one site "
                      f"{IMPORTED} was created")
        return ([{"code": c, "name": n} for c, n in sites.items()], locations, study_sites,
                default)

    def _arms(self) -> list[dict[str, str]]:
        if self.dialect:
            cl = self.defs.codelists.get("CL.CRFAPP.ARM")
            codes = self._codes(cl) if cl is not None else None
            if codes:
                return [{"code": _code(c["code"]), "name": c["label"], "regimen": "NONE"}
                        for c in codes]
        return [{"code": IMPORTED, "name": "Imported (no arm information in the file)",
                 "regimen": "NONE"}]


class _NewStudyHandler(_Handler):
    def __init__(self, path: Path, mapping: _Mapping, merger: _Merger, issues: _Issues,
                 known_studies: set[str]):
        self.path, self.mapping, self.merger, self.issues = path, mapping, merger, issues
        self.known = known_studies
        self.header_info: _Header | None = None

    def header(self, h: _Header) -> None:
        self.header_info = h

    def clinical(self, study_oid: str, mdv_oid: str) -> None:
        if study_oid not in self.known:
            self.issues.unmapped(f"clinical data of study {study_oid!r}, which the file does "
                                 "not define")

    def subject(self, el: etree._Element) -> None:
        parent = el.getparent()
        if parent is not None and parent.get("StudyOID") not in self.known:
            return
        rec = parse_subject(el, self.mapping, self.issues)
        if rec is not None and not (self.issues.refuse and self.issues.problems):
            self.merger.merge_subject(rec)


def import_new_study(db: Database, path: Path, *, admin: Any, strict: bool = False,
                     progress: Progress | None = None, cancelled: Cancelled | None = None
                     ) -> tuple[StudyHandle, ImportReport]:
    """Create a new study in the empty database `db` from an ODM file, all or nothing.

    The metadata become form definitions and a protocol (stored as metadata version 1), the
    clinical data subjects, visits and values (audited "imported from <FileOID>"). What cannot
    be mapped is listed in the report; with `strict`, unknown or unmappable data refuse the
    whole file. `admin` (a crf_app.services.setup.NewUser) is the study's first account.
    """
    from crf_app.services.setup import StudyExists, _add_user, check_new_user
    from crf_app.storage.models import MetadataVersion, Study

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    problems = check_new_user(admin)
    if problems:
        raise ValidationFailed(problems)
    with db.reading() as s:
        if s.execute(select(Study.id).limit(1)).first():
            raise StudyExists(f"the database {db.path or db.url} already holds a study; a new "
                              "study needs an empty database")
    sha = file_sha256(path)
    scan = _ScanHandler()
    half = (lambda done, total: progress(done // 2, total)) if progress else None
    stream_odm(path, scan, ImportReport(str(path), "scan"), progress=half,
               cancelled=cancelled)
    assert scan.header_info is not None
    report = ImportReport(str(path), "new study")
    builder = _StudyBuilder(path, scan.header_info, scan.studies, scan.admins, scan.scan,
                            report)
    protocol, library, mapping = builder.build()
    report.study_oid = protocol.study_id
    known = {st.get("OID", "") for st in scan.studies}
    issues = _Issues(report, refuse=strict)
    rest = (lambda done, total: progress(total // 2 + done // 2, total)) if progress else None
    now = datetime.now(UTC)
    actor = Actor(None, admin.username)
    with db.transaction() as s:
        audit = AuditWriter(s, SYSTEM, now=now)
        study = Study(oid=protocol.study_id, title=protocol.title,
                      protocol_number=protocol.protocol_number, is_demo=False)
        s.add(study)
        s.flush()
        audit.record("create", "study", study.oid, new=protocol.title,
                     reason=f"imported from {scan.header_info.file_oid}")
        forms = library.to_dict()
        s.add(MetadataVersion(study_id=study.id, version=1,
                              description=f"Imported from {scan.header_info.file_oid}",
                              protocol_json=protocol.model_dump_json(),
                              forms_json=json.dumps(forms, sort_keys=True)))
        audit.record("create", "metadata_version", f"{study.oid}/1",
                     new=f"imported protocol, {len(library.forms)} forms",
                     reason=f"imported from {scan.header_info.file_oid}")
        for site in protocol.sites:
            s.add(Site(study_id=study.id, code=site.code, name=site.name))
            audit.record("create", "site", site.code, field="name", new=site.name)
        s.flush()
        user = _add_user(s, audit, admin)
        actor = Actor(user.id, user.username)
        merger = _Merger(s, study_id=study.id, protocol=protocol, library=library,
                         file_oid=scan.header_info.file_oid, actor=actor, now=now,
                         report=report, issues=issues, allow_unknown_sex=not mapping.dialect)
        handler = _NewStudyHandler(path, mapping, merger, issues, known)
        stream_odm(path, handler, report, progress=rest, cancelled=cancelled)
        if issues.problems:
            raise ImportRefused(f"{path.name} cannot be imported in strict mode; nothing was "
                                "imported:", issues.problems)
        merger.flush()
        _finish(s, actor, now, scan.header_info, sha, report)
    return load_study(db), report
