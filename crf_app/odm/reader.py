"""Reading ODM files safely and streamed: the prolog check, the header, the metadata, and each
SubjectData handed over one at a time and freed as soon as it was used.

The prolog is checked for a DOCTYPE (refused: no entities, no billion laughs), and lxml parses
without resolving entities or touching the network. Only the elements the importer acts on
(the root, Study, AdminData, ClinicalData, SubjectData, ReferenceData, Association) reach
Python as parse events; everything inside a SubjectData is read from its finished subtree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from lxml import etree

from crf_app import odm as oe
from crf_app.odm.report import ImportCancelled, ImportRefused, ImportReport

NS = oe.ODM_NS
PROLOG_BYTES = 64 * 1024
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

Progress = Callable[[int, int], None]
Cancelled = Callable[[], bool]


def q(tag: str) -> str:
    """The qualified name of an ODM element."""
    return f"{{{NS}}}{tag}"


ODM, STUDY, ADMIN, CLINICAL, SUBJECT = (q(t) for t in ("ODM", "Study", "AdminData",
                                                        "ClinicalData", "SubjectData"))
REFERENCE, ASSOCIATION = q("ReferenceData"), q("Association")
_EVENT_TAGS = (ODM, STUDY, ADMIN, CLINICAL, SUBJECT, REFERENCE, ASSOCIATION)
_FOREIGN = etree.XPath("descendant-or-self::*[not(self::o:*)]", namespaces={"o": NS})


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
class Header:
    file_oid: str
    file_type: str
    prior_file_oid: str | None
    source_system: str
    originator: str
    created: datetime | None


class Handler:
    """What the streaming reader calls back."""

    def header(self, h: Header) -> None: ...

    def unknown(self, what: str) -> None:
        """An element of the ODM namespace where ODM 1.3.2 has none (refused or reported)."""

    def metadata(self, studies: list[etree._Element], admins: list[etree._Element]) -> None: ...

    def clinical(self, study_oid: str, mdv_oid: str) -> None: ...

    def subject(self, el: etree._Element) -> None: ...


def parse_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _count_foreign(el: etree._Element, report: ImportReport) -> None:
    """Count the vendor-extension elements (not in the ODM namespace) under `el`."""
    for ext in _FOREIGN(el):
        tag = ext.tag
        if isinstance(tag, str):
            report.extensions[tag[1:tag.index("}")] if tag.startswith("{")
                              else "(no namespace)"] += 1


_CLINICAL_PARTS = frozenset(q(t) for t in ("SubjectData", "AuditRecords", "Signatures",
                                            "Annotations"))


def _unknown_siblings(el: etree._Element, handler: Handler, following: bool = False,
                      children: bool = False) -> None:
    """ODM elements beside the SubjectData of a ClinicalData that ODM does not define there
    (a renamed SubjectData would otherwise vanish without a word)."""
    others = el.iterchildren() if children else el.itersiblings(preceding=not following)
    for other in others:
        tag = other.tag
        if isinstance(tag, str) and tag.startswith("{" + NS + "}") and \
                tag not in _CLINICAL_PARTS:
            handler.unknown(f"<{tag.rpartition('}')[2]}> elements in ClinicalData (ODM 1.3.2 "
                            "has none there)")


def stream_odm(path: Path, handler: Handler, report: ImportReport, *,
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
        # vendor elements are only looked for once the file declared another namespace
        foreign = False
        parser = etree.iterparse(source, events=("start", "end", "start-ns"), tag=_EVENT_TAGS,
                                 resolve_entities=False, no_network=True, huge_tree=False,
                                 load_dtd=False, remove_comments=True, remove_pis=True)
        try:
            for event, el in parser:
                if event == "start-ns":
                    foreign = foreign or el[1] != NS
                    continue
                tag = el.tag
                if event == "start":
                    if not root_seen:
                        root_seen = True
                        check_root(path, el if el.getparent() is None
                                   else el.getroottree().getroot(), handler, report)
                    elif tag == CLINICAL:
                        if not metadata_done:
                            handler.metadata(studies, admins)
                            metadata_done = True
                        handler.clinical(el.get("StudyOID", ""), el.get("MetaDataVersionOID", ""))
                    continue
                parent = el.getparent()
                parent_tag = parent.tag if parent is not None else None
                if tag == SUBJECT and parent_tag == CLINICAL:
                    if foreign:
                        _count_foreign(el, report)
                    _unknown_siblings(el, handler)
                    handler.subject(el)
                    el.clear()
                    while el.getprevious() is not None:
                        del parent[0]
                elif tag in (STUDY, ADMIN) and parent_tag == ODM:
                    (studies if tag == STUDY else admins).append(el)
                elif tag in (REFERENCE, ASSOCIATION) and parent_tag == ODM:
                    _count_foreign(el, report)
                    report.not_imported[f"{etree.QName(el).localname} elements (reference data "
                                        "and associations are not imported)"] += 1
                    el.clear()
                elif tag == CLINICAL:
                    if foreign:
                        _count_foreign(el, report)
                    for last in el.iterchildren(SUBJECT, reversed=True):
                        _unknown_siblings(last, handler, following=True)
                        break
                    else:
                        _unknown_siblings(el, handler, children=True)
                    el.clear()
        except etree.XMLSyntaxError as exc:
            raw.seek(max(0, total - 256))
            truncated = b"</ODM>" not in raw.read() and source.done >= total
            raise ImportRefused(f"{path.name} is not well-formed XML"
                                + (" — it ends in the middle of the document (truncated?)"
                                   if truncated else "")
                                + f": {exc}; nothing was imported") from None
        if not root_seen:  # no ODM element at all: the root says what the file is
            check_root(path, parser.root, handler, report)
        if foreign:
            _count_foreign(parser.root, report)
    if not metadata_done:
        handler.metadata(studies, admins)


def check_root(path: Path, el: etree._Element, handler: Handler,
               report: ImportReport) -> None:
    docinfo = el.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise ImportRefused(f"{path.name} declares a DOCTYPE; refused; nothing was imported")
    if el.tag != ODM:  # (a prefixed name is not a QName lxml accepts: plain string work)
        name = el.tag.rpartition("}")[2] if isinstance(el.tag, str) else "?"
        raise ImportRefused(f"{path.name} is XML but not a CDISC ODM 1.3 file (its root element "
                            f"is <{name}>, not <ODM> in the namespace {NS}); nothing was "
                            "imported")
    file_oid = el.get("FileOID") or ""
    file_type = el.get("FileType") or ""
    if not file_oid or file_type not in (oe.SNAPSHOT, oe.TRANSACTIONAL):
        raise ImportRefused(f"{path.name}: the ODM root element must have a FileOID and a "
                            "FileType (Snapshot or Transactional); nothing was imported")
    h = Header(file_oid, file_type, el.get("PriorFileOID") or None,
               el.get("SourceSystem") or "", el.get("Originator") or "",
               parse_datetime(el.get("CreationDateTime")))
    report.file_oid, report.file_type = h.file_oid, h.file_type
    report.prior_file_oid, report.source_system = h.prior_file_oid, h.source_system
    handler.header(h)


def child(el: etree._Element, tag: str) -> etree._Element | None:
    return el.find(q(tag))


def children(el: etree._Element, tag: str) -> list[etree._Element]:
    return el.findall(q(tag))


def translated(el: etree._Element | None, tag: str | None = None) -> str:
    """The English (else first) TranslatedText under `el` (or its child `tag`)."""
    if el is not None and tag is not None:
        el = child(el, tag)
    if el is None:
        return ""
    texts = children(el, "TranslatedText")
    for t in texts:
        if t.get(XML_LANG, "en").lower().startswith("en"):
            return (t.text or "").strip()
    return (texts[0].text or "").strip() if texts else ""
