"""A new study from any ODM file (crf-app, OpenClinica, REDCap…), all or nothing.

A first pass reads the metadata and scans the clinical data; the metadata become form
definitions and a protocol (stored as metadata version 1); a second pass imports the subjects,
visits, values and, from crf-app files, the adverse-event and dosing logs and the signatures
(audited "imported from <FileOID>"). What cannot be mapped is listed in the report; with
`strict`, unknown or unmappable data refuse the whole file.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lxml import etree
from pydantic import ValidationError
from sqlalchemy import select

from crf_app import odm as oe
from crf_app.domain.errors import NotFound, ValidationFailed
from crf_app.domain.forms import FormDef, FormLibrary, SectionDef
from crf_app.domain.protocol import Protocol
from crf_app.domain.subjects import SubjectStatus
from crf_app.odm.definitions import (
    IMPORTED,
    ItemBuilder,
    ScanHandler,
    alias,
    code_of,
    ident,
    unique,
)
from crf_app.odm.mapping import (
    EventMap,
    Issues,
    ItemMap,
    OdmMapping,
    clean,
    converter,
    reserved_maps,
    users,
)
from crf_app.odm.parse import parse_subject
from crf_app.odm.reader import (
    Cancelled,
    Handler,
    Header,
    Progress,
    child,
    children,
    file_sha256,
    q,
    stream_odm,
    translated,
)
from crf_app.odm.report import ImportRefused, ImportReport
from crf_app.services.context import StudyHandle, load_study
from crf_app.services.odm_import.laptop import finish
from crf_app.services.odm_import.merge import Merger
from crf_app.storage.audit import SYSTEM, Actor, AuditWriter
from crf_app.storage.engine import Database
from crf_app.storage.models import Site

RESERVED_FORMS = frozenset(reserved_maps()[0])


class StudyBuilder(ItemBuilder):
    """ODM metadata -> a Protocol, a FormLibrary and the OID mapping of the clinical data."""

    # -- forms --
    def build_forms(self) -> tuple[dict[str, FormDef], dict[str, str], dict, dict]:
        forms: dict[str, FormDef] = {}
        form_ids: dict[str, str] = {}
        groups: dict[tuple[str, str], SectionDef | None] = {}
        items: dict[tuple[str, str], ItemMap] = {}
        used_forms: set[str] = set()
        for foid, fdef in self.defs.forms.items():
            if self.dialect and foid in RESERVED_FORMS:
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
                items[(foid, ioid)] = ItemMap(item_id, item, converter(item, booleans))
        return forms, form_ids, groups, items

    def _form(self, foid: str, fdef: etree._Element, used_forms: set[str]):
        name = fdef.get("Name") or foid
        if self.dialect and foid.startswith("F.") and \
                re.fullmatch(r"[a-z][a-z0-9_]{0,39}", foid[2:]) and foid[2:] not in used_forms:
            form_id = foid[2:]
            used_forms.add(form_id)
        else:
            form_id = unique(ident(foid, upper=False, limit=40), used_forms, 40)
        if fdef.get("Repeating") == "Yes":
            self.note(f"form {foid}: repeating form imported as a single form (only its first "
                      "repeat can be stored)")
        sections: list[dict[str, Any]] = []
        section_of_group: dict[str, str] = {}
        item_maps: dict[tuple[str, str], bool] = {}
        used_sections: set[str] = set()
        used_items: set[str] = set()
        for igref in children(fdef, "ItemGroupRef"):
            igoid = igref.get("ItemGroupOID", "")
            igdef = self.defs.groups.get(igoid)
            if igdef is None:
                self.note(f"form {foid}: item group {igoid} is not defined; skipped")
                continue
            raw_sid = igoid.split(".", 2)[2] if self.dialect and igoid.count(".") >= 2 \
                else igoid
            sid = unique(ident(raw_sid, upper=False, limit=40), used_sections, 40)
            section_items = []
            for iref in children(igdef, "ItemRef"):
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
                max_rows = alias(igdef, "crf-app:max_rows")
                if max_rows and max_rows.isdigit():
                    section["max_rows"] = int(max_rows)
            sections.append(section)
            section_of_group[igoid] = sid
        if not sections:
            self.note(f"form {foid} ({name}) has no importable item; not imported")
            return None
        version = alias(fdef, oe.ALIAS_FORM_VERSION) if self.dialect else None
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
    def build(self) -> tuple[Protocol, FormLibrary, OdmMapping]:
        forms, form_ids, groups, items = self.build_forms()
        if not forms:
            raise ImportRefused(f"{self.path.name}: no form could be mapped; nothing was "
                                "imported", self.report.notes)
        visits, events = self._visits(form_ids, forms)
        sites, location_sites, study_sites, default_site = self._sites()
        arms = self._arms()
        study_oid = self.main.get("OID", "")
        gv = child(self.main, "GlobalVariables")
        title = clean(gv.findtext(q("StudyName")) or "") if gv is not None else ""
        number = clean(gv.findtext(q("ProtocolName")) or "") if gv is not None else ""
        version = "imported"
        if self.dialect and (self.mdv.get("Description") or "").startswith("Protocol "):
            version = self.mdv.get("Description", "")[9:] or version
        data = {"study_id": code_of(study_oid), "title": title or study_oid,
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
            reserved_forms, reserved_groups, reserved_items = reserved_maps()
            forms_map = {**form_ids, **reserved_forms}
            groups.update(reserved_groups)
            items.update(reserved_items)
            events[oe.SUBJECT_EVENT_OID] = EventMap(None)
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
        mapping = OdmMapping(self.dialect, events, forms_map, groups, items, users(self.admins),
                           location_sites, study_sites, default_site,
                           complete_history=self.dialect and self.h.file_type ==
                           oe.TRANSACTIONAL, placeholders=placeholders)
        return protocol, library, mapping

    def _visits(self, form_ids: dict[str, str], forms: dict[str, FormDef]
                ) -> tuple[list[dict[str, Any]], dict[str, EventMap]]:
        visits: list[dict[str, Any]] = []
        events: dict[str, EventMap] = {}
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
            code = unique(code_of(raw), used, 40)
            refs = children(sed, "FormRef")
            visit_forms = list(dict.fromkeys(form_ids[r.get("FormOID", "")] for r in refs
                                             if r.get("FormOID", "") in form_ids))
            name = clean(sed.get("Name", "")) or code
            window = {"before": 0, "after": 0}
            alias_day = alias(sed, oe.ALIAS_DAY) if self.dialect else None
            day = int(alias_day) if alias_day and re.fullmatch(r"-?\d+", alias_day) and \
                int(alias_day) >= day else day + 1
            alias_window = alias(sed, oe.ALIAS_WINDOW) if self.dialect else None
            if alias_window and (m := re.fullmatch(r"-(\d+)/\+(\d+)", alias_window)):
                window = {"before": int(m.group(1)), "after": int(m.group(2))}
            visits.append({"code": code, "name": name, "day": day, "window": window,
                           "forms": visit_forms})
            em = EventMap(code)
            events[eoid] = em
            if sed.get("Repeating") == "Yes":
                for k in range(2, self.scan.repeats.get(eoid, 1) + 1):
                    day += 1
                    rcode = unique(code_of(f"{code[:34]}-{k}"), used, 40)
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
            events = defaultdict(lambda: EventMap("V1"))
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
            for loc in children(admin, "Location"):
                oid = loc.get("OID", "")
                raw = oid[4:] if self.dialect and oid.startswith("LOC.") else oid
                code = code_of(raw)
                sites.setdefault(code, clean(loc.get("Name", "")) or code)
                locations[oid] = code
        for st in self.studies:
            if st is self.main:
                continue
            if any(inc.get("StudyOID") == main_oid for mdv in children(st, "MetaDataVersion")
                   for inc in children(mdv, "Include")):
                code = code_of(st.get("OID", ""))
                gv = child(st, "GlobalVariables")
                name = clean(gv.findtext(q("StudyName")) or "") if gv is not None else ""
                sites.setdefault(code, name or code)
                study_sites[st.get("OID", "")] = code
        for oid in self.scan.locations:
            if oid and oid not in locations:
                code = code_of(oid)
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
                return [{"code": code_of(c["code"]), "name": c["label"], "regimen": "NONE"}
                        for c in codes]
        return [{"code": IMPORTED, "name": "Imported (no arm information in the file)",
                 "regimen": "NONE"}]


class _NewStudyHandler(Handler):
    def __init__(self, path: Path, mapping: OdmMapping, merger: Merger, issues: Issues,
                 known_studies: set[str]):
        self.path, self.mapping, self.merger, self.issues = path, mapping, merger, issues
        self.known = known_studies
        self.header_info: Header | None = None

    def header(self, h: Header) -> None:
        self.header_info = h

    def clinical(self, study_oid: str, mdv_oid: str) -> None:
        if study_oid not in self.known:
            self.issues.unmapped(f"clinical data of study {study_oid!r}, which the file does "
                                 "not define")

    def unknown(self, what: str) -> None:
        self.issues.unmapped(what)

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
    scan = ScanHandler()
    half = (lambda done, total: progress(done // 2, total)) if progress else None
    stream_odm(path, scan, ImportReport(str(path), "scan"), progress=half,
               cancelled=cancelled)
    assert scan.header_info is not None
    report = ImportReport(str(path), "new study")
    builder = StudyBuilder(path, scan.header_info, scan.studies, scan.admins, scan.scan,
                            report)
    protocol, library, mapping = builder.build()
    report.study_oid = protocol.study_id
    known = {st.get("OID", "") for st in scan.studies}
    issues = Issues(report, refuse=strict)
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
        merger = Merger(s, study_id=study.id, protocol=protocol, library=library,
                         file_oid=scan.header_info.file_oid, actor=actor, now=now,
                         report=report, issues=issues, allow_unknown_sex=not mapping.dialect)
        handler = _NewStudyHandler(path, mapping, merger, issues, known)
        stream_odm(path, handler, report, progress=rest, cancelled=cancelled)
        if issues.problems:
            raise ImportRefused(f"{path.name} cannot be imported in strict mode; nothing was "
                                "imported:", issues.problems)
        merger.flush()
        finish(s, actor, now, scan.header_info, sha, report)
    return load_study(db), report
