"""How the OIDs of a file map onto a study, the value converters, and the problems list.

A mapping is built from this study's metadata (merging a crf-app file) or from the file's own
metadata (a new study); either way the clinical data are read through it into plain records.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from html import unescape

from lxml import etree

from crf_app import odm as oe
from crf_app.domain.forms import ItemDef, SectionDef
from crf_app.domain.forms.types import parse_value
from crf_app.odm.reader import child, children
from crf_app.odm.report import ImportReport

# Reserved form ids of a crf-app file (a form id never starts with "@").
SUBJECT_RECORD, VISIT_RECORD, SIGNATURES = "@subject", "@visit", "@signature"


def log_form_id(log: oe.LogDef) -> str:
    return f"@{log.entity}"


@dataclass
class ItemMap:
    item_id: str
    item: ItemDef | None  # None for the reserved record, log and signature items
    convert: Callable[[str], str]  # ODM value -> canonical text; ValueError if refused
    record: oe.RecordField | None = None
    known: dict[str, str] = field(default_factory=dict)  # values converted already


@dataclass
class EventMap:
    code: str | None  # None: the reserved subject-record event
    repeating_codes: dict[str, str] = field(default_factory=dict)

    def code_for(self, key: str | None) -> str | None:
        if self.code is None:
            return None
        if key in (None, "", "1"):
            return self.code
        return self.repeating_codes.get(key)


@dataclass
class OdmMapping:
    """How the OIDs of a file map onto this study (built from local or incoming metadata)."""

    dialect: bool  # a crf-app file: subject and visit records travel as reserved forms
    events: dict[str, EventMap]
    forms: dict[str, str]  # form OID -> form id (or a reserved "@…" id)
    groups: dict[tuple[str, str], SectionDef | None]
    items: dict[tuple[str, str], ItemMap]
    users: dict[str, str]
    sites: dict[str, str]  # LocationOID -> site code
    study_sites: dict[str, str]  # ClinicalData StudyOID -> site code
    default_site: str | None
    complete_history: bool
    placeholders: dict[str, str] = field(default_factory=dict)  # subject attr -> value


def clean(text: str) -> str:
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
    """Subject and visit record values: checked by type; log values also by code list and
    length. The text is kept as written (it is what the audit trail of the other side holds)."""
    codes = oe.LOG_CODELISTS[f.codelist][2] if f.codelist in oe.LOG_CODELISTS else None
    multi = oe.LOG_CODELISTS[oe.MULTI_CODES[f.attr]][2] if f.attr in oe.MULTI_CODES and \
        isinstance(f, oe.LogField) else None
    limit = f.max_length if isinstance(f, oe.LogField) else None

    def convert(raw: str) -> str:
        text = raw.strip()
        if not text:
            raise ValueError(f"{f.label}: empty value")
        kind = f.data_type
        if kind == "integer":
            int(text)
        elif kind == "date":
            date.fromisoformat(text)
        elif kind == "time":
            time.fromisoformat(text)
        elif kind == "datetime":
            datetime.fromisoformat(text)
        elif kind == "float":
            try:
                if not Decimal(text).is_finite():
                    raise ValueError(f"{text!r} is not a number")
            except InvalidOperation:
                raise ValueError(f"{text!r} is not a number") from None
        if codes is not None and text not in codes:
            raise ValueError(f"{text!r} is not one of {', '.join(codes)}")
        if multi is not None and any(code not in multi for code in text.split(",")):
            raise ValueError(f"{text!r} holds a code that is not one of {', '.join(multi)}")
        if limit is not None and len(text) > limit:
            raise ValueError(f"longer than {limit} characters")
        return text
    return convert


def reserved_maps() -> tuple[dict[str, str], dict[tuple[str, str], SectionDef | None],
                             dict[tuple[str, str], ItemMap]]:
    """The forms, item groups and items crf-app keeps outside the case report forms."""
    forms = {oe.SUBJECT_FORM_OID: SUBJECT_RECORD, oe.VISIT_FORM_OID: VISIT_RECORD,
             oe.SIGNATURE_FORM_OID: SIGNATURES}
    groups: dict[tuple[str, str], SectionDef | None] = {
        (oe.SUBJECT_FORM_OID, oe.SUBJECT_GROUP_OID): None,
        (oe.VISIT_FORM_OID, oe.VISIT_GROUP_OID): None,
        (oe.SIGNATURE_FORM_OID, oe.SIGNATURE_GROUP_OID): None}
    specs: list[tuple[str, tuple[oe.RecordField, ...]]] = [
        (oe.SUBJECT_FORM_OID, oe.SUBJECT_FIELDS), (oe.VISIT_FORM_OID, oe.VISIT_FIELDS),
        (oe.SIGNATURE_FORM_OID, oe.SIGNATURE_FIELDS)]
    for log in oe.LOGS:
        forms[log.form_oid] = log_form_id(log)
        groups[(log.form_oid, log.group_oid)] = None
        specs.append((log.form_oid, log.fields))
    items = {(foid, f.oid): ItemMap(f.item_id, None, record_converter(f), f)
             for foid, fields in specs for f in fields}
    return forms, groups, items


def users(admins: list[etree._Element]) -> dict[str, str]:
    """UserOID -> login name (AdminData)."""
    out = {}
    for admin in admins:
        for user in children(admin, "User"):
            oid = user.get("OID", "")
            login = child(user, "LoginName")
            out[oid] = (login.text or "").strip() if login is not None and login.text else \
                oid.removeprefix("USR.")
    return out


class Issues:
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
