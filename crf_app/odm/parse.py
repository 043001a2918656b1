"""One SubjectData -> a SubjectRecord in this study's ids (forms, records, logs, signatures).

Problems (an unknown OID, a value of the wrong type) go to `Issues`: a merge refuses the file,
a new study reports them. Queries travel as annotations; they are counted as not imported.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from functools import lru_cache
from typing import Any

from lxml import etree

from crf_app import odm as oe
from crf_app.odm.mapping import (
    SIGNATURES,
    SUBJECT_RECORD,
    VISIT_RECORD,
    Issues,
    OdmMapping,
    log_form_id,
)
from crf_app.odm.reader import parse_datetime, q

_AUDIT, _USER, _STAMP, _REASON = (q(t) for t in ("AuditRecord", "UserRef", "DateTimeStamp",
                                                  "ReasonForChange"))
_ANNOTATION, _SIGNATURE, _ITEM = q("Annotation"), q("Signature"), q("ItemData")
_ITEM_GROUP, _FORM, _EVENT = q("ItemGroupData"), q("FormData"), q("StudyEventData")
_TYPED = tuple(q(t) for t in ("ItemDataAny", "ItemDataString", "ItemDataInteger",
                              "ItemDataFloat", "ItemDataDate", "ItemDataTime",
                              "ItemDataDatetime", "ItemDataBoolean"))
_SITE_REF, _FLAG, _FLAG_VALUE = q("SiteRef"), q("Flag"), q("FlagValue")
_ODM_PREFIX = "{" + oe.ODM_NS + "}"
_KNOWN = {  # the ODM 1.3.2 children of each level of the clinical data
    "SubjectData": ("AuditRecord", "Signature", "InvestigatorRef", "SiteRef", "Annotation",
                    "StudyEventData"),
    "StudyEventData": ("AuditRecord", "Signature", "Annotation", "FormData"),
    "FormData": ("AuditRecord", "Signature", "ArchiveLayoutRef", "Annotation", "ItemGroupData"),
    "ItemGroupData": ("AuditRecord", "Signature", "Annotation", "ItemData", "ItemDataURI",
                      "ItemDataAny", "ItemDataBoolean", "ItemDataString", "ItemDataInteger",
                      "ItemDataFloat", "ItemDataDouble", "ItemDataDate", "ItemDataTime",
                      "ItemDataDatetime", "ItemDataHexBinary", "ItemDataBase64Binary",
                      "ItemDataHexFloat", "ItemDataBase64Float", "ItemDataPartialDate",
                      "ItemDataPartialTime", "ItemDataPartialDatetime",
                      "ItemDataDurationDatetime", "ItemDataIntervalDatetime",
                      "ItemDataIncompleteDatetime", "ItemDataIncompleteDate",
                      "ItemDataIncompleteTime"),
    "ItemData": ("AuditRecord", "Signature", "MeasurementUnitRef", "Annotation"),
}
_KNOWN_TAGS = {level: frozenset(q(t) for t in tags) for level, tags in _KNOWN.items()}
_QUERIES_NOT_MERGED = "query annotations (queries are not merged yet)"
_OTHER_SIGNATURES = "signatures (Signature elements of other systems)"
_LOGS = {log_form_id(log): log for log in oe.LOGS}

# Children are looked up with iterchildren(tag) (C) or one pass over them: lxml's find() and
# findall() go through its ElementPath machinery, which costs several times more.


def _first(el: etree._Element | None, tag: str) -> etree._Element | None:
    if el is None:
        return None
    for found in el.iterchildren(tag):
        return found
    return None


def _count(el: etree._Element, tag: str) -> int:
    return sum(1 for _ in el.iterchildren(tag))


def _unknown(tag: Any, level: str, issues: Issues, where: str) -> None:
    """An ODM element ODM 1.3.2 does not define here: refused in a merge, else reported (never
    dropped silently); other namespaces are vendor extensions, counted by the reader."""
    if isinstance(tag, str) and tag.startswith(_ODM_PREFIX) and tag not in _KNOWN_TAGS[level]:
        issues.unmapped(f"<{tag[len(_ODM_PREFIX):]}> elements inside <{level}> (ODM 1.3.2 "
                        "has none there)", where)


def _check_children(el: etree._Element, level: str, issues: Issues, where: str) -> None:
    for part in el:
        _unknown(part.tag, level, issues, where)


def parse_subject(el: etree._Element, m: OdmMapping, issues: Issues
                  ) -> oe.SubjectRecord | None:
    """One SubjectData -> a SubjectRecord in this study's ids (problems go to `issues`)."""
    key = (el.get("SubjectKey") or "").strip()
    if not key:
        issues.unmapped("SubjectData without a SubjectKey")
        return None
    site_ref = _first(el, _SITE_REF)
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
    _check_children(el, "SubjectData", issues, key)
    visits: dict[str, oe.VisitRecord] = {}
    if notes := _count(el, _ANNOTATION):
        issues.report.not_imported["subject annotations (queries and comments)"] += notes
    if not m.dialect and _first(el, _SIGNATURE) is not None:
        issues.report.not_imported[_OTHER_SIGNATURES] += 1
    for se in el.iterchildren(_EVENT):
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
        _check_children(se, "StudyEventData", issues, where)
        if notes := _count(se, _ANNOTATION):
            issues.report.not_imported["visit annotations (queries and comments)"] += notes
        if code is not None and code not in visits:
            visits[code] = oe.VisitRecord(code)
        for fd in se.iterchildren(_FORM):
            _parse_form(fd, m, issues, rec, visits.get(code) if code else None,
                        f"{key}/{code or 'subject'}")
    if not any(c.item_id == "SITE" for c in rec.fields):  # the site comes from the SiteRef
        rec.fields.append(oe.Cell("SITE", site, [oe.Change(
            None, None, site, "" if not m.dialect else "the site of the SiteRef")]))
    rec.visits = list(visits.values())
    for v in rec.visits:
        if m.placeholders and not any(c.item_id == "VISSTAT" for c in v.fields) and v.forms:
            v.fields.append(oe.Cell("VISSTAT", "done", [oe.Change(
                None, None, "done", "the file has data for this visit")]))
    return rec


@lru_cache(maxsize=8192)
def _stamp(text: str | None) -> datetime | None:
    """A DateTimeStamp (the values of one save share theirs: parsed once)."""
    return parse_datetime(text)


def audit_of(el: etree._Element, m: OdmMapping) -> tuple[datetime | None, str | None, str]:
    """(when, who, why) of the AuditRecord of `el`; (None, None, '') without one."""
    ar = _first(el, _AUDIT)
    return _audit_record(ar, m) if ar is not None else (None, None, "")


def _audit_record(ar: etree._Element, m: OdmMapping
                  ) -> tuple[datetime | None, str | None, str]:
    user_ref, stamp, reason = "", None, ""
    for part in ar:
        tag = part.tag
        if tag == _STAMP:
            stamp = part.text
        elif tag == _USER:
            user_ref = part.get("UserOID", "")
        elif tag == _REASON:
            reason = (part.text or "").strip()
    at = _stamp(stamp)
    if at is None:
        return None, None, ""
    return at, m.users.get(user_ref) or user_ref.removeprefix("USR.") or None, reason


def _parse_form(fd: etree._Element, m: OdmMapping, issues: Issues, rec: oe.SubjectRecord,
                visit: oe.VisitRecord | None, where: str) -> None:
    foid = fd.get("FormOID", "")
    form_id = m.forms.get(foid)
    if form_id is None:
        issues.unmapped(f"form {foid!r} is not defined (or could not be mapped)", where)
        return
    _check_children(fd, "FormData", issues, where)
    if fd.get("FormRepeatKey") not in (None, "", "1"):
        issues.unmapped(f"repeat {fd.get('FormRepeatKey')} of form {foid} (forms do not "
                        "repeat in crf-app)", where)
        return
    if form_id in _LOGS or form_id == SIGNATURES:
        if visit is not None:
            issues.unmapped(f"form {foid} inside a visit (it belongs to the subject's "
                            f"{oe.SUBJECT_EVENT_OID} event)", where)
        elif form_id == SIGNATURES:
            _parse_signatures(fd, m, issues, rec, where)
        else:
            _parse_log(fd, _LOGS[form_id], m, issues, rec, where)
        return
    if form_id == SUBJECT_RECORD:
        cells = rec.fields
    elif visit is None:
        issues.unmapped(f"form {foid} outside a visit", where)
        return
    elif form_id == VISIT_RECORD:
        cells = visit.fields
    else:
        at, user, _ = audit_of(fd, m)
        frec = oe.FormRecord(form_id, "", at, user)
        for ann in fd.iterchildren(_ANNOTATION):
            value = _first(_first(ann, _FLAG), _FLAG_VALUE)
            if value is not None and value.get("CodeListOID") == oe.FORM_STATUS_CODELIST:
                frec.status = (value.text or "").strip()
            else:
                issues.report.not_imported[_QUERIES_NOT_MERGED] += 1
        if not m.dialect and _first(fd, _SIGNATURE) is not None:
            issues.report.not_imported[_OTHER_SIGNATURES] += 1
        visit.forms.append(frec)
        cells = frec.cells
    where = f"{where}/{form_id.lstrip('@')}"
    by_key: dict[tuple[str, int], oe.Cell] = {(c.item_id, c.row): c for c in cells}
    rows_seen: dict[str, int] = defaultdict(int)
    for ig in fd.iterchildren(_ITEM_GROUP):
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
        _parse_group(ig, m, issues, foid, row, by_key, cells, where)


def _parse_group(ig: etree._Element, m: OdmMapping, issues: Issues, foid: str, row: int,
                 by_key: dict[tuple[str, int], oe.Cell], cells: list[oe.Cell],
                 where: str) -> None:
    notes = 0
    typed: set[str] = set()
    for part in ig:  # one pass: ItemData, and what else the group holds
        tag = part.tag
        if tag == _ITEM:
            _parse_item(part, m, issues, foid, row, by_key, cells, where)
        elif tag == _ANNOTATION:
            notes += 1
        elif tag in _TYPED:
            typed.add(tag)
        else:
            _unknown(tag, "ItemGroupData", issues, where)
    if notes:
        issues.report.not_imported["item group annotations"] += notes
    for tag in sorted(typed):
        issues.unmapped(f"typed {etree.QName(tag).localname} elements (only ItemData is "
                        "read)", where)


def _parse_item(idata: etree._Element, m: OdmMapping, issues: Issues, foid: str, row: int,
                by_key: dict[tuple[str, int], oe.Cell], cells: list[oe.Cell],
                where: str) -> None:
    ioid = idata.get("ItemOID", "")
    imap = m.items.get((foid, ioid))
    if imap is None:
        issues.unmapped(f"item {ioid!r} does not exist in form {foid}", where)
        return
    raw = idata.get("Value")
    new: str | None = None
    if raw is not None and idata.get("TransactionType") != "Remove" and \
            idata.get("IsNull") != "Yes" and raw.strip():
        new = imap.known.get(raw)
        if new is None:
            try:
                new = imap.convert(raw)
            except ValueError as exc:
                spot = f"{where}/{imap.item_id}" + (f"[{row + 1}]" if row else "")
                issues.bad(spot, f"value {raw[:60]!r} refused: {exc}")
                return
            if len(imap.known) < 512:
                imap.known[raw] = new
    at, user, reason = None, None, ""
    for part in idata:  # AuditRecord, Annotations
        tag = part.tag
        if tag == _AUDIT:
            at, user, reason = _audit_record(part, m)
        elif tag == _ANNOTATION:
            issues.report.not_imported[_QUERIES_NOT_MERGED] += 1
        else:
            _unknown(tag, "ItemData", issues, where)
    cell = by_key.get((imap.item_id, row))
    if cell is None:
        cell = by_key[(imap.item_id, row)] = oe.Cell(imap.item_id, None, row=row,
                                                     complete_history=m.complete_history)
        cells.append(cell)
    cell.value = new
    cell.history.append(oe.Change(at, user, new, reason))


def _parse_log(fd: etree._Element, log: oe.LogDef, m: OdmMapping, issues: Issues,
               rec: oe.SubjectRecord, where: str) -> None:
    where = f"{where}/{log.entity}"
    rows: dict[str, oe.LogRow] = {r.key: r for r in rec.logs if r.log == log.entity}
    for ig in fd.iterchildren(_ITEM_GROUP):
        if ig.get("ItemGroupOID") != log.group_oid:
            issues.unmapped(f"item group {ig.get('ItemGroupOID')!r} is not part of form "
                            f"{log.form_oid}", where)
            continue
        key = (ig.get("ItemGroupRepeatKey") or "").strip()
        if not key:
            issues.unmapped(f"a {log.name.lower()} record without an ItemGroupRepeatKey", where)
            continue
        row = rows.get(key)
        if row is None:
            row = rows[key] = oe.LogRow(log.entity, key)
            rec.logs.append(row)
        by_key = {(c.item_id, 0): c for c in row.cells}
        for part in ig:  # one pass: the row's AuditRecord, its queries, its values
            tag = part.tag
            if tag == _ITEM:
                _parse_item(part, m, issues, log.form_oid, 0, by_key, row.cells,
                            f"{where}[{key}]")
            elif tag == _AUDIT:
                at, user, _ = _audit_record(part, m)
                if at is not None and (row.updated_at is None or at >= row.updated_at):
                    row.updated_at, row.updated_by = at, user
            elif tag == _ANNOTATION:
                issues.report.not_imported[_QUERIES_NOT_MERGED] += 1
            else:
                _unknown(tag, "ItemGroupData", issues, where)


def _parse_signatures(fd: etree._Element, m: OdmMapping, issues: Issues,
                      rec: oe.SubjectRecord, where: str) -> None:
    where = f"{where}/signature"
    by_item = {f.item_id: f for f in oe.SIGNATURE_FIELDS}
    for ig in fd.iterchildren(_ITEM_GROUP):
        if ig.get("ItemGroupOID") != oe.SIGNATURE_GROUP_OID:
            issues.unmapped(f"item group {ig.get('ItemGroupOID')!r} is not part of form "
                            f"{oe.SIGNATURE_FORM_OID}", where)
            continue
        cells: list[oe.Cell] = []
        for idata in ig.iterchildren(_ITEM):
            _parse_item(idata, m, issues, oe.SIGNATURE_FORM_OID, 0, {}, cells, where)
        values = {by_item[c.item_id].attr: c.value for c in cells}
        try:
            sig = oe.SignatureRecord(
                scope=_required(values, "scope"), visit=values.get("visit"),
                form=values.get("form"), username=_required(values, "username"),
                printed_name=_required(values, "printed_name"),
                meaning=_required(values, "meaning"),
                signed_at=_moment(_required(values, "signed_at")),
                values_hash=_required(values, "values_hash"),
                forms_signed=int(_required(values, "forms_signed")),
                state=_required(values, "state"),
                invalidated_at=_moment(values["invalidated_at"])
                if values.get("invalidated_at") else None,
                invalidated_reason=values.get("invalidated_reason") or "")
        except ValueError as exc:
            issues.bad(f"{where}[{ig.get('ItemGroupRepeatKey')}]", str(exc))
            continue
        if (sig.scope != "casebook" and not sig.visit) or (sig.scope == "form" and not sig.form):
            issues.bad(f"{where}[{ig.get('ItemGroupRepeatKey')}]",
                       f"a {sig.scope} signature must name its visit"
                       + (" and form" if sig.scope == "form" else ""))
            continue
        rec.signatures.append(sig)


def _required(values: dict[str, str | None], attr: str) -> str:
    value = values.get(attr)
    if not value:
        label = next(f.label for f in oe.SIGNATURE_FIELDS if f.attr == attr)
        raise ValueError(f"{label} is missing")
    return value


def _moment(text: str) -> datetime:
    at = parse_datetime(text)
    if at is None:
        raise ValueError(f"{text!r} is not a date and time")
    return at
