"""ClinicalData, written one SubjectData at a time as the plan's iterator yields them, and the
file around it (written beside its name, synced, then renamed)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from lxml import etree

from crf_app.domain.errors import CrfError
from crf_app.domain.forms import ItemDef
from crf_app.odm.metadata import admin_element, study_element
from crf_app.odm.records import (
    Cell,
    ExportPlan,
    FormRecord,
    LogRow,
    QueryNote,
    SignatureRecord,
    SubjectRecord,
)
from crf_app.odm.scheme import (
    FLAG_QUERY,
    FLAG_STATUS,
    FLAG_TYPE_CODELIST,
    FORM_STATUS_CODELIST,
    GENERIC_SIGNATURE_OID,
    LOGS,
    ODM_NS,
    QUERY_STATE_CODELIST,
    SIGNATURE_FIELDS,
    SIGNATURE_FORM_OID,
    SIGNATURE_GROUP_OID,
    SUBJECT_EVENT_OID,
    SUBJECT_FIELDS,
    SUBJECT_FORM_OID,
    SUBJECT_GROUP_OID,
    VISIT_FIELDS,
    VISIT_FORM_OID,
    VISIT_GROUP_OID,
    LogDef,
    RecordField,
    event_oid,
    form_oid,
    group_oid,
    item_oid,
    mdv_oid,
    signature_oids,
    site_oid,
    timestamp,
    to_odm_value,
    user_oid,
)

Progress = Callable[[int, int], None]
Cancelled = Callable[[], bool]


class ExportCancelled(CrfError):
    """The user cancelled the export; the partial file was deleted."""



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
    head = (f'<ODM xmlns="{ODM_NS}"' + "".join(f' {k}="{_attr(v)}"' for k, v in root.items())
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
