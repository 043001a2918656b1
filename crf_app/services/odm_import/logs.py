"""Merging the adverse-event and dosing logs and the electronic signatures of a subject.

A log row is the same row in every database when its key (`log_row_key`: created when, by
whom) matches. A row only the file has is added with its whole audited history; a row both
have is merged field by field like a form value (`Merger.merge_cell`), so a field changed on
both sides becomes a merge conflict. Rows are never deleted (the logs have no deletion).

Signatures are matched by (scope, visit, form, signer, time). One only the file has is added
as it was (its values hash was computed by the signing database, from its own row ids, so it
is kept for the record, not recomputed); an invalidation travels too. Values a merge changes
invalidate this database's signatures that cover them, as a local change would.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select

from crf_app import odm as oe
from crf_app.domain.coverage import Content, ContentChange
from crf_app.services.odm_export import log_keys, log_label
from crf_app.services.odm_import.bulk import RawInsert, RawSelect
from crf_app.services.odm_import.targets import LogTarget, log_columns
from crf_app.storage.log_models import AdverseEvent, DosingRecord
from crf_app.storage.models import FormInstance, Subject, Visit
from crf_app.storage.signoff_models import Signature

if TYPE_CHECKING:
    from crf_app.services.odm_import.merge import Merger

MODELS: dict[str, Any] = {oe.AE_LOG.entity: AdverseEvent, oe.DOSE_LOG.entity: DosingRecord}
IDENTITY = ("sequence", "created_at", "created_by")  # set when a row is added, never merged
DERIVED = ("flag_text", "warnings", "dose_unit")  # unaudited: follow the audited fields
# What a new row must carry: the fields the services always record (and audit), so that no
# value is stored from a default the file never said (a dose "given" because EXMISSED is absent).
REQUIRED = {oe.AE_LOG.entity: ("term", "location", "start_date", "ongoing", "severity",
                               "grade", "serious", "action", "outcome", "created_at",
                               "created_by"),
            oe.DOSE_LOG.entity: ("date", "instillations", "missed", "created_at",
                                 "created_by")}
_DEFAULTS: dict[str, dict[str, Any]] = {
    oe.AE_LOG.entity: {"verbatim": "", "start_time": None, "end_date": None, "ongoing": False,
                       "serious": False, "relationship": None, "treatment": "", "flags": "",
                       "flag_text": "", "sae_recorded_at": None, "sae_reported_at": None,
                       **{col: False for col in ("sae_death", "sae_life_threatening",
                                                 "sae_hospitalisation", "sae_disability",
                                                 "sae_congenital_anomaly",
                                                 "sae_medically_important")}},
    oe.DOSE_LOG.entity: {"dose_time": None, "dose_mg": None, "dose_unit": "mg",
                         "instillations": 0, "nostril": "", "route": "", "lot": "",
                         "given_by": "", "missed": False, "missed_reason": "",
                         "findings": "", "warnings": ""},
}


class LogMerger:
    """The part of `Merger` that merges logs and signatures."""

    content: set[ContentChange]
    log_inserts: dict[str, RawInsert]
    log_ids: dict[str, RawSelect]

    # -- logs --
    def merge_logs(self: Merger, subj: Subject, rec: oe.SubjectRecord, local: dict,
                   conflicts: list, fresh: bool) -> None:
        for log in oe.LOGS:
            incoming = [row for row in rec.logs if row.log == log.entity]
            if not incoming:
                continue
            model = MODELS[log.entity]
            stored = [] if fresh else list(self.s.execute(
                select(model).where(model.subject_id == subj.id).order_by(model.id)).scalars())
            by_key = dict(zip(log_keys(stored), stored, strict=True))
            new_rows = [row for row in incoming if row.key not in by_key]
            for row in incoming:
                if row.key in by_key:
                    self._merge_log_row(log, subj, by_key[row.key], row, local, conflicts)
            if new_rows:
                self._add_log_rows(log, subj, stored, new_rows)

    def _merge_log_row(self: Merger, log: oe.LogDef, subj: Subject, obj: Any, row: oe.LogRow,
                       local: dict, conflicts: list) -> None:
        entity_id = log_label(log, subj.screening_number, obj)
        by_item = {f.item_id: f for f in log.fields}
        applied = False
        derived = []
        for cell in row.cells:
            f = by_item[cell.item_id]
            if f.attr in IDENTITY:
                continue
            if f.attr in DERIVED:
                derived.append((f, cell))
                continue
            t = LogTarget(log, f, obj, entity_id)
            outcome = self.merge_cell(t, cell, local.get((log.entity, entity_id, f.attr), []),
                                      conflicts, subj, fresh=False)
            if outcome == "applied":
                applied = True
                self.report.log_values_changed += 1
            self._changed |= outcome in ("applied", "conflict")
        if not applied:
            return
        for f, cell in derived:
            LogTarget(log, f, obj, entity_id).apply(cell.value)
        if row.updated_at is not None and (obj.updated_at is None
                                           or row.updated_at > obj.updated_at):
            obj.updated_at, obj.updated_by = row.updated_at, row.updated_by

    def _add_log_rows(self: Merger, log: oe.LogDef, subj: Subject, stored: list[Any],
                      rows: list[oe.LogRow]) -> None:
        """Rows only the file has: inserted in one statement, then their history recorded."""
        by_item = {f.item_id: f for f in log.fields}
        used = {obj.sequence for obj in stored} if log is oe.AE_LOG else set()
        ready: list[tuple[oe.LogRow, dict[str, Any]]] = []
        for row in sorted(rows, key=_creation_order):
            values: dict[str, Any] = {"subject_id": subj.id, **_DEFAULTS[log.entity],
                                      "updated_at": row.updated_at,
                                      "updated_by": row.updated_by, "row_version": 1}
            for cell in row.cells:
                values.update(log_columns(by_item[cell.item_id], cell.value))
            where = f"{subj.screening_number}/{log.entity}[{row.key}]"
            present = {by_item[c.item_id].attr for c in row.cells if c.value is not None}
            missing = [attr for attr in REQUIRED[log.entity] if attr not in present]
            if missing:
                self.issues.bad(where, "a new record without " + ", ".join(
                    log.field(a).label.lower() for a in missing))
                continue
            if log is oe.AE_LOG:
                wanted = values.get("sequence")
                if not wanted or wanted in used:
                    values["sequence"] = max(used, default=0) + 1
                    self.report.notes.append(
                        f"{subj.screening_number}: adverse event {row.key} (AE{wanted} in the "
                        f"file) is AE{values['sequence']} here: AE{wanted} was taken")
                used.add(values["sequence"])
            ready.append((row, values))
        if not ready or (self.issues.refuse and self.issues.problems):
            return
        model = MODELS[log.entity]
        insert = self.log_inserts.get(log.entity)
        if insert is None:
            columns = [c.name for c in model.__table__.columns if c.name != "id"]
            insert = self.log_inserts[log.entity] = RawInsert(self.s, model.__table__, columns)
        insert.run([tuple(values.get(c) for c in insert.columns) for _, values in ready])
        ids_of = self.log_ids.get(log.entity)
        if ids_of is None:
            ids_of = self.log_ids[log.entity] = RawSelect(self.s, select(model.id).where(
                model.subject_id == bindparam("subject")).order_by(model.id))
        known = {obj.id for obj in stored}
        ids = [i for (i,) in ids_of.rows(subject=subj.id) if i not in known]
        for (row, values), row_id in zip(ready, ids, strict=True):
            values["id"] = row_id
            entity_id = log_label(log, subj.screening_number, _Row(values))
            for cell in row.cells:
                f = by_item[cell.item_id]
                if f.audited:  # the row holds its values already: only the history is written
                    self.new_history(log.entity, entity_id, f.attr, cell, subj.id)
        self.report.log_rows_added += len(ready)
        self._changed = True
        self.content.add(ContentChange(
            Content.ADVERSE_EVENT if log is oe.AE_LOG else Content.DOSE, subj.id))

    # -- signatures --
    def merge_signatures(self: Merger, subj: Subject, rec: oe.SubjectRecord,
                         visits: dict[str, Visit], fresh: bool) -> None:
        if not rec.signatures:
            return
        s = self.s
        stored: dict[tuple, Signature] = {}
        if not fresh:
            for sig, code, form in s.execute(
                    select(Signature, Visit.visit_code, FormInstance.form_id)
                    .outerjoin(Visit, Signature.visit_id == Visit.id)
                    .outerjoin(FormInstance, Signature.form_instance_id == FormInstance.id)
                    .where(Signature.subject_id == subj.id)):
                stored[(sig.scope, code, form, sig.username, sig.signed_at)] = sig
        s.flush()  # the ids of forms added by this merge
        by_form: dict[str, list[str]] = defaultdict(list)
        for code, form in self._conflicted_forms:
            by_form[code].append(form)
        added = []
        for sig in rec.signatures:
            existing = stored.get(sig.identity)
            if existing is not None:
                if sig.state == "invalidated" and existing.state == "valid":
                    self._invalidate(subj, existing, sig.invalidated_at,
                                     sig.invalidated_reason or "invalidated on the other side")
                continue
            new = self._new_signature(subj, sig, visits, by_form)
            if new is not None:
                added.append(new)
        if not added:
            return
        s.flush()  # their ids, for the audit trail
        for new, sig, invalidation in added:
            self.audit.record(
                "create", "signature", new.id, field="meaning", new=sig.meaning,
                reason=f"imported from {self.file_oid}: {sig.scope} of "
                       f"{subj.screening_number}, signed by {sig.printed_name} "
                       f"({sig.forms_signed} forms, sha256 {sig.values_hash[:16]}…)",
                subject_id=subj.id, at=sig.signed_at, actor=self.actor_of(sig.username))
            self.report.events_recorded += 1
            self.report.signatures_added += 1
            if invalidation is not None:
                self._invalidate(subj, new, *invalidation, count=False)

    def _new_signature(self: Merger, subj: Subject, sig: oe.SignatureRecord,
                       visits: dict[str, Visit], conflicted: dict[str, list[str]]
                       ) -> tuple[Signature, oe.SignatureRecord, tuple | None] | None:
        """A signature only the file has, added (valid: its invalidation is recorded after
        it, with the reason); None when what it signs is not here."""
        where = f"{subj.screening_number}/signature of {sig.username} at {sig.signed_at}"
        visit = visits.get(sig.visit or "")
        fi = self._instances.get((visit.id, sig.form or "")) if visit is not None else None
        if (sig.scope != "casebook" and visit is None) or (sig.scope == "form" and fi is None):
            self.issues.unmapped(f"a {sig.scope} signature of {sig.visit}/{sig.form or ''}, "
                                 "which is not in this study", where)
            return
        state, invalidated_at, reason = sig.state, sig.invalidated_at, sig.invalidated_reason
        clash = conflicted.get(sig.visit or "", []) if sig.scope != "casebook" else \
            [f for forms in conflicted.values() for f in forms]
        if state == "valid" and clash and (sig.scope != "form" or sig.form in clash):
            state, invalidated_at = "invalidated", self.now
            reason = "the values signed conflict with this database's (merge conflict)"
        new = Signature(subject_id=subj.id, scope=sig.scope,
                        visit_id=visit.id if visit is not None and sig.scope != "casebook"
                        else None, form_instance_id=fi.id if sig.scope == "form" and fi
                        else None, user_id=self.user_ids.get(sig.username, 0),
                        username=sig.username, printed_name=sig.printed_name,
                        meaning=sig.meaning, signed_at=sig.signed_at,
                        values_hash=sig.values_hash, forms_signed=sig.forms_signed,
                        state="valid", invalidated_reason="")
        self.s.add(new)
        return new, sig, (invalidated_at, reason) if state == "invalidated" else None

    def _invalidate(self: Merger, subj: Subject, sig: Signature, at: Any, reason: str,
                    count: bool = True) -> None:
        sig.state, sig.invalidated_at = "invalidated", at or self.now
        sig.invalidated_reason = reason
        self.audit.record("update", "signature", sig.id, field="state", old="valid",
                          new="invalidated", reason=f"imported from {self.file_oid}: {reason}",
                          subject_id=subj.id)
        self.report.events_recorded += 1
        if count:
            self.report.signatures_invalidated += 1
            self._changed = True


class _Row:
    """Attribute access to a row being added (for its audit label)."""

    def __init__(self, values: dict[str, Any]):
        self.id, self.sequence = values["id"], values.get("sequence")


def _creation_order(row: oe.LogRow) -> tuple[str, int]:
    stamp, _, rest = row.key.partition("/")
    ordinal = rest.rpartition("/")[2]
    return (row.value("created_at") or stamp, int(ordinal) if ordinal.isdigit() else 0)
