"""Merging another laptop's transactional crf-app file into the open study, all or nothing.

The file must continue the chain of files already imported from that laptop (FileOID /
PriorFileOID): a gap, a replay or a fork is refused, and the very same file again is a no-op.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session

from crf_app import odm as oe
from crf_app.domain.errors import NotFound
from crf_app.domain.roles import Action
from crf_app.odm.mapping import (
    EventMap,
    Issues,
    ItemMap,
    OdmMapping,
    converter,
    reserved_maps,
    users,
)
from crf_app.odm.parse import parse_subject
from crf_app.odm.reader import (
    ODM,
    Cancelled,
    Handler,
    Header,
    Progress,
    check_prolog,
    file_sha256,
    stream_odm,
)
from crf_app.odm.report import ImportRefused, ImportReport
from crf_app.services.context import StudyHandle, UserContext
from crf_app.services.forms import form_library
from crf_app.services.odm_export import node_id
from crf_app.services.odm_import.merge import Merger
from crf_app.services.pipeline import write, write_action
from crf_app.storage.audit import Actor, AuditWriter
from crf_app.storage.interchange_models import ImportedFile


def local_mapping(study: StudyHandle, admins: list[etree._Element]) -> OdmMapping:
    """How a crf-app file of this very study maps: its OIDs are this study's."""
    library = form_library(study)
    events = {oe.SUBJECT_EVENT_OID: EventMap(None)}
    events.update({oe.event_oid(v.code): EventMap(v.code) for v in study.protocol.visits})
    forms, groups, items = reserved_maps()
    for form in library.forms.values():
        foid = oe.form_oid(form.id)
        forms[foid] = form.id
        for section in form.sections:
            groups[(foid, oe.group_oid(form.id, section.id))] = section
        for item in form.items:
            items[(foid, oe.item_oid(form.id, item.id))] = ItemMap(item.id, item,
                                                                  converter(item))
    return OdmMapping(True, events, forms, groups, items, users(admins),
                      {oe.site_oid(s.code): s.code for s in study.protocol.sites}, {}, None,
                      complete_history=True)


class _MergeHandler(Handler):
    def __init__(self, ctx: UserContext, s: Session, path: Path, sha: str,
                 report: ImportReport, issues: Issues):
        self.ctx, self.s, self.path, self.sha = ctx, s, path, sha
        self.report, self.issues = report, issues
        self.mapping: OdmMapping | None = None
        self.merger: Merger | None = None
        self.header_info: Header | None = None

    def header(self, h: Header) -> None:
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
        self.mapping = local_mapping(study, admins)
        self.merger = Merger(self.s, study_id=study.study_id, protocol=study.protocol,
                             library=form_library(study), file_oid=self.report.file_oid,
                             actor=self.ctx.user.actor, now=self.ctx.now(),
                             report=self.report, issues=self.issues,
                             site_scope=self.ctx.user.site_code)

    def clinical(self, study_oid: str, mdv: str) -> None:
        study = self.ctx.study
        if study_oid != study.oid:
            raise ImportRefused(f"{self.path.name} holds clinical data of study {study_oid}; "
                                f"this database holds study {study.oid}; nothing was imported")
        if mdv != oe.mdv_oid(study.metadata_version):
            raise ImportRefused(f"{self.path.name} was written under metadata version {mdv}; "
                                f"this study runs {oe.mdv_oid(study.metadata_version)}; "
                                "nothing was imported")

    def unknown(self, what: str) -> None:
        self.issues.unmapped(what)

    def subject(self, el: etree._Element) -> None:
        assert self.mapping is not None and self.merger is not None
        rec = parse_subject(el, self.mapping, self.issues)
        if rec is not None and not self.issues.problems:
            self.merger.merge_subject(rec)


def check_chain(s: Session, h: Header, sha: str, path: Path) -> bool:
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


@write_action("import_odm", Action.IMPORT)
def import_odm(ctx: UserContext, path: Path, *, strict: bool = True,
               progress: Progress | None = None, cancelled: Cancelled | None = None
               ) -> ImportReport:
    """Merge a transactional crf-app ODM file of this study, all or nothing; audited.

    Merging is always strict (an unknown OID or a value the forms engine refuses refuses the
    whole file); `strict` is accepted for symmetry with `import_new_study`. The file is
    refused as a whole when it changes locked data, or (for a site-bound importer) a subject
    of another site; what it changes voids the signatures and verifications covering it.
    """
    del strict
    ctx.require(Action.IMPORT)
    path = Path(path)
    report = ImportReport(str(path), "merge")
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    sha = file_sha256(path)
    issues = Issues(report, refuse=True)
    with write(ctx, "import_odm") as w:
        s = w.session
        handler = _MergeHandler(ctx, s, path, sha, report, issues)
        check_prolog(path)
        if _already_imported(s, path, sha, report):
            report.study_oid = ctx.study.oid
            return report
        stream_odm(path, handler, report, progress=progress, cancelled=cancelled)
        if issues.problems:
            raise ImportRefused(f"{path.name} cannot be merged; nothing was imported:",
                                issues.problems)
        if handler.merger is not None:
            handler.merger.flush()
        finish(s, ctx.user.actor, ctx.now(), handler.header_info, sha, report)
    return report


def _already_imported(s: Session, path: Path, sha: str, report: ImportReport) -> bool:
    """A cheap look at the root element: the same file imported again changes nothing."""
    try:
        for _, el in etree.iterparse(str(path), events=("start",), resolve_entities=False,
                                     no_network=True, huge_tree=False, load_dtd=False):
            if el.tag != ODM:
                return False
            h = Header(el.get("FileOID") or "", el.get("FileType") or "",
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


def finish(s: Session, actor: Actor, now: datetime, h: Header | None, sha: str,
           report: ImportReport) -> None:
    """The import's own audit event, and the file remembered with its report."""
    assert h is not None
    summary = (f"{report.subjects_added} subjects added, {report.subjects_updated} updated; "
               f"{len(report.conflicts)} conflicts")
    AuditWriter(s, actor, now=now).record("import", "odm_file", h.file_oid, new=summary,
                                          reason=f"imported from {h.file_oid}")
    s.add(ImportedFile(file_oid=h.file_oid, prior_file_oid=h.prior_file_oid,
                       file_type=h.file_type, originator=h.originator,
                       source_system=h.source_system, imported_at=now,
                       imported_by=actor.username, sha256=sha, report=report.text()))
