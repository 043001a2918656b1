"""Writing SubjectRecords into a study, all in the caller's transaction: the subject and visit
records and the forms here, the logs and signatures in `logs`, each value through
`history.HistoryMerger` (fast-forward, or a conflict when both sides changed it).

A subject the file brings new is written without ORM objects (`rows`), its values and audit
events in bulk (`bulk`); a subject already here is merged through the ORM.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crf_app import odm as oe
from crf_app.domain.addresses import form_address, visit_address
from crf_app.domain.coverage import Content, ContentChange
from crf_app.domain.forms import FormDef, FormLibrary, validate_form
from crf_app.domain.protocol import Protocol
from crf_app.domain.subjects import SEXES, SubjectStatus, schedule
from crf_app.odm.mapping import Issues
from crf_app.odm.report import ImportReport
from crf_app.services.forms import NOT_STARTED, flatten, unflatten
from crf_app.services.odm_import.bulk import BulkAudit, ValueInserts
from crf_app.services.odm_import.history import HistoryMerger
from crf_app.services.odm_import.logs import LogMerger
from crf_app.services.odm_import.rows import NewRows
from crf_app.services.odm_import.targets import (
    AttrTarget,
    ItemTarget,
    LocalEvent,
    NewValue,
    typed,
)
from crf_app.services.pipeline import lock_message, lock_on, void_covered
from crf_app.storage.audit import Actor
from crf_app.storage.interchange_models import MergeConflict
from crf_app.storage.models import AuditEvent, FormInstance, ItemValue, Site, Subject, User, Visit

DATA_ENTITIES = ("item", "subject", "visit", oe.AE_LOG.entity, oe.DOSE_LOG.entity)
_REQUIRED = ("initials", "birth_year", "sex", "arm", "consent_date", "enrolled_on", "status")
EXPUNGE_EVERY = 100  # subjects between clearing the session


class Merger(HistoryMerger, LogMerger):
    """Writes SubjectRecords into the study, all in the caller's transaction."""

    def __init__(self, s: Session, *, study_id: int, protocol: Protocol, library: FormLibrary,
                 file_oid: str, actor: Actor, now: datetime, report: ImportReport,
                 issues: Issues, allow_unknown_sex: bool = False,
                 site_scope: str | None = None):
        self.s, self.study_id, self.protocol, self.library = s, study_id, protocol, library
        self.site_scope = site_scope  # a site-bound importer merges only their site's subjects
        # what the merge changes or contests in stored subjects (see `_settle`)
        self.touched_targets: list[Any] = []
        self.content: set[ContentChange] = set()
        self.file_oid, self.actor, self.now = file_oid, actor, now
        self.report, self.issues = report, issues
        self.allow_unknown_sex = allow_unknown_sex
        self.audit = BulkAudit(s, actor, now)
        self.values = ValueInserts(s)
        self.new_values: list[NewValue] = []
        self._actors: dict[str, Actor] = {}
        self._imported = f"imported from {file_oid}"
        self._unaudited = f"{self._imported} (the file has no audit record for this value)"
        self.log_inserts = {}
        self.log_ids = {}
        self.rows = NewRows(s, study_id, protocol)
        self._new_forms: list[Any] = []
        self._fresh = False
        self.site_ids = {code: sid for code, sid in s.execute(
            select(Site.code, Site.id).where(Site.study_id == study_id))}
        self.site_locks = {sid: lk for sid in self.site_ids.values()
                           if (lk := lock_on(s, site_id=sid)) is not None}
        self.user_ids = dict(s.execute(select(User.username, User.id)).all())
        self.arms = {a.code for a in protocol.arms}
        self.item_ids = {f.id: {i.id for i in f.items} for f in library.forms.values()}
        self.repeating = {f.id: {i.id: s.repeating for s in f.sections for i in s.items}
                          for f in library.forms.values()}
        self._changed = False
        self._pending = 0
        self._instances: dict[tuple[int, str], FormInstance] = {}
        self._stores: dict[int, dict[tuple[str, int], ItemValue]] = defaultdict(dict)
        self._conflicted_forms: set[tuple[str, str]] = set()

    # -- subjects --
    def _check_field(self, f: oe.RecordField, value: str | None, where: str) -> bool:
        try:
            if value is None:
                if f.attr == "site" or f.attr in _REQUIRED:
                    raise ValueError("a value is required")
                return True
            typed(f.attr, value)
            if f.attr == "site" and value not in self.site_ids:
                raise ValueError(f"{value!r} is not a site of this study")
            if f.attr == "sex" and value not in SEXES and not (self.allow_unknown_sex
                                                               and value == "U"):
                raise ValueError(f"{value!r} is not F or M")
            if f.attr == "arm" and value not in self.arms:
                raise ValueError(f"{value!r} is not an arm of this study")
            if f.attr == "status" and value not in SubjectStatus.LABELS:
                raise ValueError(f"{value!r} is not a subject status")
            if f.attr == "initials" and len(value) > 4:
                raise ValueError("initials have at most 4 characters")
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
                                    if f.attr in _REQUIRED):
            self.issues.unmapped("a new subject without its subject record (initials, year of "
                                 "birth, arm, consent…)", rec.key)
            return
        if not ok or (self.issues.problems and self.issues.refuse):
            return
        if self.site_scope is not None:
            sites = {rec.site} | ({next(c for c, i in self.site_ids.items()
                                        if i == subj.site_id)} if subj is not None else set())
            if sites - {self.site_scope}:
                self.issues.bad(rec.key, f"the subject is at site {', '.join(sorted(sites))}; "
                                f"{self.actor.username!r} works at site {self.site_scope} and "
                                "may not import data of another site")
                return
        self._changed = False
        self.touched_targets, self.content = [], set()
        fresh = self._fresh = subj is None
        self._instances, self._stores = {}, defaultdict(dict)
        self._new_stores: dict[int, dict[tuple[str, int], Any]] = {}
        self._conflicted_forms = set()
        if fresh:
            subj = self.rows.subject(rec.key, self.site_ids[rec.site], {
                f.attr: typed(f.attr, fields[f.item_id].value)
                for f in oe.SUBJECT_FIELDS if f.item_id in fields and f.attr != "site"})
            local: dict[tuple[str, str, str], list[LocalEvent]] = {}
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
            t = AttrTarget(subj, f, rec.key, self.site_ids, visit=False)
            outcome = self.merge_cell(t, cell, local.get(("subject", rec.key, f.attr), []),
                                      conflicts, subj, fresh=fresh)
            if not fresh:
                self._count(outcome, field=True)
        visits = {v.visit_code: v for v in subj.visits}
        merged = []
        for vrec in rec.visits:
            visit = visits.get(vrec.code)
            if visit is None:
                self.issues.unmapped(f"visit {vrec.code!r} is not in the protocol", rec.key)
                continue
            self._merge_visit(subj, visit, vrec, local, conflicts, fresh)
            merged.append((visit, vrec))
        if fresh:
            self.rows.insert_visits(subj)
        for visit, vrec in merged:
            self._merge_forms(subj, visit, vrec, local, conflicts)
        if fresh:
            self.rows.insert_forms(subj.id, self._new_forms)
            self._new_forms = []
        elif subj.baseline_date is not None:
            for pv in schedule(self.protocol, subj.baseline_date):
                v = visits.get(pv.code)
                if v is not None:
                    v.window_start, v.window_end = pv.window_start, pv.window_end
        self.merge_logs(subj, rec, local, conflicts, fresh)
        self.merge_signatures(subj, rec, visits, fresh)
        self._settle(subj, fresh)
        if fresh:
            self.report.subjects_added += 1
        elif self._changed:
            self.report.subjects_updated += 1
        else:
            self.report.subjects_unchanged += 1
        self.flush()
        self._pending += 1
        if self._pending >= EXPUNGE_EVERY:
            s.expunge_all()
            self._pending = 0

    def _settle(self, subj: Any, fresh: bool) -> None:
        """The pipeline's rules for what this subject's merge changed: refused when it changes
        or contests locked data (form, subject or site lock; the import is then refused as a
        whole), else the verifications and signatures covering the changes are voided."""
        changes = set(self.content)
        for t in self.touched_targets:
            if isinstance(t, ItemTarget):
                changes.add(ContentChange(Content.FORM, subj.id, t.visit_id, t.fi.id))
            elif isinstance(t, AttrTarget):
                changes.add(ContentChange(Content.VISIT_DATE, subj.id, t.visit_id) if t.visit
                            else ContentChange(Content.SUBJECT, subj.id))
            else:
                changes.add(ContentChange(Content.ADVERSE_EVENT if t.log is oe.AE_LOG
                                          else Content.DOSE, subj.id))
        self.touched_targets, self.content = [], set()
        if fresh:
            lock = self.site_locks.get(subj.site_id)
        elif not (changes or self._changed):
            return
        else:
            lock = next((lk for fi_id in sorted({c.form_instance_id for c in changes
                                                 if c.form_instance_id is not None})
                         if (lk := lock_on(self.s, site_id=subj.site_id, subject_id=subj.id,
                                           form_instance_id=fi_id)) is not None), None) \
                or lock_on(self.s, site_id=subj.site_id, subject_id=subj.id)
        if lock is not None:
            self.issues.bad(subj.screening_number, "the file changes locked data: "
                            + lock_message(lock))
            return
        if fresh or not changes:
            return
        undone = void_covered(self.s, self.audit, changes, self.now,
                              why=f"data changed by merging {self.file_oid}")
        self.report.events_recorded += len(undone)
        self.report.signatures_invalidated += sum("signature" in u for u in undone)

    def flush(self) -> None:
        """Write what is pending: ORM rows first (their ids), then values and audit in bulk."""
        self.s.flush()
        self.values.run([(v.fi.id, v.item_id, v.row, v.value) for v in self.new_values])
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

    def _local_events(self, subject_id: int) -> dict[tuple[str, str, str], list[LocalEvent]]:
        out: dict[tuple[str, str, str], list[LocalEvent]] = defaultdict(list)
        for row in self.s.execute(
                select(AuditEvent.id, AuditEvent.entity, AuditEvent.entity_id,
                       AuditEvent.field, AuditEvent.occurred_at, AuditEvent.username,
                       AuditEvent.new_value)
                .where(AuditEvent.subject_id == subject_id,
                       AuditEvent.entity.in_(DATA_ENTITIES))
                .order_by(AuditEvent.id)):
            out[(row.entity, row.entity_id, row.field)].append(
                LocalEvent(row.id, row.occurred_at, row.username, row.new_value))
        return out

    def _merge_visit(self, subj: Subject, visit: Visit, vrec: oe.VisitRecord, local: dict,
                     conflicts: list[MergeConflict], fresh: bool) -> None:
        entity_id = visit_address(subj.screening_number, visit.visit_code)
        initial = {"status": "planned", "deviation": ""}
        cells = {c.item_id: c for c in vrec.fields}
        for f in oe.VISIT_FIELDS:
            cell = cells.get(f.item_id)
            if cell is None:
                continue
            try:
                typed(f.attr, cell.value, visit=True)
            except ValueError as exc:
                self.issues.bad(f"{entity_id}/{f.item_id}", str(exc))
                continue
            t = AttrTarget(visit, f, entity_id, self.site_ids, visit=True)
            outcome = self.merge_cell(t, cell, local.get(("visit", entity_id, f.attr), []),
                                      conflicts, subj, fresh=fresh, initial=initial.get(f.attr))
            if not fresh:
                self._count(outcome, field=True)

    def _merge_forms(self, subj: Subject, visit: Visit, vrec: oe.VisitRecord, local: dict,
                     conflicts: list[MergeConflict]) -> None:
        entity_id = visit_address(subj.screening_number, visit.visit_code)
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
        label = form_address(subj.screening_number, visit.visit_code, form.id)
        known = self.item_ids[form.id]
        unknown = [c.item_id for c in frec.cells if c.item_id not in known]
        if unknown:
            for item_id in unknown:
                self.issues.unmapped(f"item {item_id!r} is not in form {form.id}", label)
            return
        fi = self._instances.get((visit.id, form.id))
        new_form = fi is None
        if fi is None and self._fresh:
            fi = self.rows.form(visit.id, form.id, form.version, frec.status or "in_progress",
                                frec.updated_at, frec.updated_by)
            self._new_forms.append(fi)
        elif fi is None:
            fi = FormInstance(visit_id=visit.id, form_id=form.id, form_version=form.version,
                              status=frec.status or "in_progress", updated_at=frec.updated_at,
                              updated_by=frec.updated_by)
            s.add(fi)
        if new_form:
            # the form's status, audited as a save audits it (a form without values, e.g. no
            # concomitant medications, has no other event)
            original = frec.updated_by is not None and frec.updated_at is not None
            self.audit.record("update", "form", label, field="status", old=NOT_STARTED,
                              new=fi.status, reason=self._imported, subject_id=subj.id,
                              at=frec.updated_at if original else None,
                              actor=self.actor_of(frec.updated_by) if original else None)
            self.report.events_recorded += 1
            self._instances[(visit.id, form.id)] = fi
            self.report.forms_added += 1
            self._changed = True
            self.content.add(ContentChange(Content.FORM, subj.id, visit.id, None))
            store: dict[tuple[str, int], Any] = {}
            self._new_stores[id(fi)] = store
        else:  # (a form twice in the file: its second FormData merges with the first)
            store = self._stores[fi.id] if fi.id is not None else self._new_stores[id(fi)]
        applied = conflicted = 0
        repeating_items = self.repeating[form.id]
        sn, code = subj.screening_number, visit.visit_code
        for cell in frec.cells:
            repeating = repeating_items[cell.item_id]
            entity_id = oe.item_entity_id(sn, code, form.id, cell.item_id,
                                          cell.row if repeating else None)
            if new_form:  # nothing here to merge with: the history, then the value
                outcome = self.new_history("item", entity_id, cell.item_id, cell, subj.id)
                if cell.value is not None:
                    key = (cell.item_id, cell.row if repeating else 0)
                    store[key] = new = NewValue(fi, key[0], key[1], cell.value)
                    self.new_values.append(new)
                self._count(outcome, removed=outcome == "applied" and cell.value is None,
                            added=outcome == "applied")
                applied += outcome == "applied"
                continue
            t = ItemTarget(s, fi, store, cell.item_id, cell.row if repeating else 0, entity_id,
                           self.new_values)
            before = t.current()
            outcome = self.merge_cell(t, cell, local.get(("item", entity_id, cell.item_id),
                                                         []), conflicts, subj, fresh=False)
            self._count(outcome, removed=outcome == "applied" and cell.value is None,
                        added=outcome == "applied" and before is None)
            applied += outcome == "applied"
            conflicted += outcome == "conflict"
        if conflicted:
            self._conflicted_forms.add((visit.visit_code, form.id))
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
            self.content.add(ContentChange(Content.FORM, subj.id, visit.id, fi.id))
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
        computed = dict(flatten(form, result.computed).items())
        for key, value in computed.items():
            if stored.get(key) == value:
                continue
            item_id, row = key
            repeating = form.section_of(item_id).repeating
            entity_id = oe.item_entity_id(subj.screening_number, visit.visit_code, form.id,
                                          item_id, row if repeating else None)
            t = ItemTarget(self.s, fi, store, item_id, row, entity_id, self.new_values)
            self.audit.record("update" if key in stored else "create", "item", entity_id,
                              field=item_id, old=stored.get(key), new=value,
                              reason=f"recomputed after merging {self.file_oid}",
                              subject_id=subj.id)
            self.report.events_recorded += 1
            t.apply(value)
