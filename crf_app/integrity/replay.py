"""Tamper evidence beyond the hash chain: replay the audit trail and compare it with the data.

The hash chain (crf_app.storage.audit.walk_chain) proves that the audit trail itself was not
edited and that no event was removed from its middle. It says nothing about the data tables: a
value changed, a row deleted or a row inserted with raw SQL leaves the chain intact. The replay
closes that gap. It folds the audit events per (entity, entity id, field) into the state they
describe, then compares it with what is stored:

* every stored value must equal the last value the audit trail gave it (or the field's
  documented default when no event ever set it);
* every stored row must have the audit events that created it;
* every row the audit trail says exists must still be there;
* rows whose parent row is gone (a form without its visit…) are named as orphans.

What is compared (the clinical data, sign-off records and access control):

=================  ==========================================================================
subject            site, initials, birth_year, sex, arm, consent_date, enrolled_on,
                   baseline_date, status, status_reason, status_date; its screening number
                   (the audit entity id) against the subject id its events carry
visit              planned_date, actual_date, status, deviation; window_start, window_end and
                   sequence are derived from the protocol schedule and the audited baseline; a
                   scheduled visit that is missing is named
form               status (and that the form has an audit record at all)
item               every value, by screening number / visit / form / item [row]
adverse_event      every audited field (term … treatment, criteria, flags, the SAE clock)
dose               every audited field (date, time, dose, instillations … findings)
query              state, and its thread of messages against the events' reasons
verification       state (verified / cleared)
signature          state, meaning, and the values hash the creating event names
merge_conflict     created, resolution and state
lock               scope, target and state (locked / unlocked)
user               full_name, role, site, active, failed_logins (a forged or re-roled account)
site, study        name, title
metadata_version   that each version has its creating event (not its content, see below)
odm_file           exported and imported ODM files against their audit events
=================  ==========================================================================

Not compared (no audit event describes them, or they are derived):

* derived and bookkeeping columns: created_at/created_by/updated_at/updated_by, row_version,
  AE flag_text (the messages of the audited flags), dose warnings and dose_unit, query
  opened/closed timestamps, signature timestamps and printed name, user last_login_at and
  password_hash, the interchange node id;
* the protocol and form definitions stored in metadata_version (the creating event does not
  hash them);
* the status of a form created by an ODM import (the importer does not audit it: the form is
  still checked to have audited values);
* the status_date set when the eligibility form screen-fails a subject (forms.save_form does not
  audit it): accepted when it is within a day of the audited status change.

The replay streams the events subject by subject (a batch of subjects at a time, events in id
order within each subject), so memory stays bounded by the largest batch, not the trail.
"""

from __future__ import annotations

import time as _clock
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crf_app.domain.errors import CrfError
from crf_app.domain.protocol import Protocol
from crf_app.domain.subjects import SubjectStatus, schedule
from crf_app.services.adverse_events import CRITERIA_COLUMNS
from crf_app.storage.audit import ChainBreak, audit_text, walk_chain
from crf_app.storage.engine import Database
from crf_app.storage.interchange_models import ExportedFile, ImportedFile, MergeConflict
from crf_app.storage.log_models import AdverseEvent, DosingRecord
from crf_app.storage.models import (
    AuditEvent,
    FormInstance,
    ItemValue,
    MetadataVersion,
    Query,
    QueryMessage,
    Site,
    Study,
    Subject,
    User,
    Visit,
)
from crf_app.storage.signoff_models import Lock, Signature, Verification

KEEP = 1000  # discrepancies kept in the report (all of them are counted)
SHOW = 50  # discrepancies printed by `lines()`
BATCH_SUBJECTS = 200

CHANGED, MISSING, UNAUDITED, ORPHAN = "changed", "missing", "unaudited", "orphan"

SUBJECT_FIELDS = (("site", "text"), ("initials", "text"), ("birth_year", "int"),
                  ("sex", "text"), ("arm", "text"), ("consent_date", "date"),
                  ("enrolled_on", "date"), ("baseline_date", "date"), ("status", "text"),
                  ("status_reason", "text"), ("status_date", "date"))
VISIT_FIELDS = (("planned_date", "date"), ("actual_date", "date"), ("status", "text"),
                ("deviation", "text"))
VISIT_DEFAULTS = {"status": "planned"}
AE_FIELDS = (("term", "text"), ("verbatim", "text"), ("location", "text"),
             ("start_date", "date"), ("start_time", "time"), ("end_date", "date"),
             ("ongoing", "bool"), ("severity", "text"), ("grade", "int"), ("serious", "bool"),
             ("criteria", "set"), ("relationship", "text"), ("action", "text"),
             ("outcome", "text"), ("treatment", "text"), ("flags", "text"),
             ("sae_recorded_at", "datetime"), ("sae_reported_at", "datetime"))
DOSE_FIELDS = (("date", "date"), ("time", "time"), ("dose_mg", "decimal"),
               ("instillations", "int"), ("nostril", "text"), ("route", "text"),
               ("lot", "text"), ("given_by", "text"), ("missed", "bool"),
               ("missed_reason", "text"), ("findings", "text"))
USER_FIELDS = (("full_name", "text"), ("role", "text"), ("site", "text"), ("active", "bool"),
               ("failed_logins", "int"))
# Subject-scoped entities (their events carry the subject id); the others are global.
SUBJECT_SCOPED = frozenset({"subject", "visit", "form", "item", "adverse_event", "dose",
                            "query", "verification", "signature", "merge_conflict"})
# (a lock's events name the subject it is about, but locks are replayed with the globals)
GLOBAL = ("user", "site", "study", "metadata_version", "lock", "odm_file")
ELIGIBILITY_REASON = "eligibility criteria not met"

_NAMES = {"adverse_event": "adverse event", "merge_conflict": "merge conflict",
          "odm_file": "ODM file", "metadata_version": "metadata version"}


# --- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Discrepancy:
    """One difference between the stored data and what the audit trail says it should be."""

    kind: str  # changed / missing / unaudited / orphan
    entity: str  # the audit entity: item, subject, visit, form, adverse_event, dose…
    entity_id: str  # as the audit trail names it: S01-004/D7/vital_signs/SYSBP
    field: str = ""
    expected: str | None = None  # the audit trail's last value
    found: str | None = None  # what is stored
    event_id: int | None = None  # the event that set the expected value
    note: str = ""

    def text(self) -> str:
        what = f"{_NAMES.get(self.entity, self.entity)} {self.entity_id}" + (
            f" {self.field}" if self.field else "")
        ev = f" (event #{self.event_id})" if self.event_id else ""
        if self.note:
            return f"{what}: {self.note}" + ("" if "#" in self.note else ev)
        if self.kind == CHANGED:
            return (f"{what}: stored {_show(self.found)}, but the audit trail says "
                    f"{_show(self.expected)}{ev} — changed behind the app's back")
        if self.kind == MISSING:
            return (f"{what}: missing (deleted behind the app's back); the audit trail says "
                    f"{_show(self.expected)}{ev}")
        if self.kind == UNAUDITED:
            return (f"{what}: stored {_show(self.found)} but no audit event ever wrote it — "
                    "inserted behind the app's back")
        return f"{what}: {self.kind}"


def _show(value: str | None) -> str:
    if value is None:
        return "no value"
    return repr(value if len(value) <= 80 else value[:77] + "…")


@dataclass
class ReplayReport:
    """What the replay compared and every discrepancy found (the first KEEP are kept)."""

    events: int = 0  # audit events replayed
    rows: int = 0  # stored rows and values compared
    found: int = 0  # discrepancies found
    discrepancies: list[Discrepancy] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.found == 0

    def add(self, d: Discrepancy) -> None:
        self.found += 1
        if len(self.discrepancies) < KEEP:
            self.discrepancies.append(d)


@dataclass(frozen=True)
class AuditReport:
    """`crf-app verify-audit`: the hash chain, then the replay of the trail against the data.

    `events_checked`, `broken_event_id` and `problem` describe the chain up to its first break
    (as before); `chain_breaks` names every break found; `replay` the comparison with the data.
    """

    events_checked: int
    broken_event_id: int | None
    problem: str
    chain_breaks: tuple[ChainBreak, ...] = ()
    chain_broken: int = 0
    events_total: int = 0
    replay: ReplayReport | None = None
    chain_seconds: float = 0.0

    @property
    def chain_ok(self) -> bool:
        return self.broken_event_id is None

    @property
    def ok(self) -> bool:
        return self.chain_ok and (self.replay is None or self.replay.ok)

    def lines(self, show: int = SHOW) -> list[str]:
        """The report as text lines: what `crf-app verify-audit` prints and the GUI shows."""
        if self.chain_ok:
            out = [f"audit trail verified: {self.events_checked} events, chain intact"]
        else:
            out = [f"audit trail BROKEN at event {self.broken_event_id}: {self.problem} "
                   f"({self.events_checked} events before it verified)"]
            if self.chain_broken > 1:
                out.append(f"  {self.chain_broken} breaks in the chain of "
                           f"{self.events_total} events:")
                out += [f"  - event {b.event_id}: {b.problem}"
                        for b in self.chain_breaks[:show]]
                if self.chain_broken > min(show, len(self.chain_breaks)):
                    out.append(f"  … and {self.chain_broken - min(show, len(self.chain_breaks))}"
                               " more")
        r = self.replay
        if r is None:
            return out
        head = (f"replay: {r.events} events replayed against {r.rows} stored rows and values "
                f"in {r.seconds:.1f} s")
        if r.ok:
            out.append(f"{head}: the data matches the audit trail")
        else:
            out.append(f"{head}: {r.found} discrepanc{'y' if r.found == 1 else 'ies'} between "
                       "the data and the audit trail:")
            shown = r.discrepancies[:show]
            out += [f"  - {d.text()}" for d in shown]
            if r.found > len(shown):
                out.append(f"  … and {r.found - len(shown)} more ({r.found} in all)")
        out += [f"  note: {n}" for n in r.notes]
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


def verify_everything(db: Database, *, replay: bool = True) -> AuditReport:
    """Walk the hash chain (naming every break) and replay the trail against the data."""
    start = _clock.perf_counter()
    with db.reading() as s:
        _snapshot(s)
        walk = walk_chain(s)
    chain_seconds = _clock.perf_counter() - start
    first = walk.breaks[0] if walk.breaks else None
    return AuditReport(walk.checked, first.event_id if first else None,
                       first.problem if first else "", tuple(walk.breaks), walk.broken,
                       walk.total, replay_audit(db) if replay else None, chain_seconds)


def _snapshot(s: Session) -> None:
    """Read everything from one snapshot while the app may be writing: SQLite's read
    transaction (BEGIN DEFERRED, WAL) already is one; PostgreSQL needs REPEATABLE READ."""
    if s.get_bind().dialect.name == "postgresql":
        s.connection(execution_options={"isolation_level": "REPEATABLE READ"})


# --- comparing one value ------------------------------------------------------------------------
def _same(kind: str, expected: str | None, found: Any, default: str | None = None) -> bool:
    """Does the stored value `found` equal the audit trail's text `expected`?"""
    exp = audit_text(expected if expected is not None else default)  # '' is no value too
    got = audit_text(found)
    if exp == got:
        return True
    if exp is None or got is None:
        return False
    try:
        if kind == "date":
            return date.fromisoformat(exp) == found
        if kind == "time":
            return time.fromisoformat(exp) == found
        if kind == "datetime":
            when = datetime.fromisoformat(exp)
            return (when if when.tzinfo else when.replace(tzinfo=UTC)) == found
        if kind == "int":
            return int(exp) == int(found)
        if kind == "decimal":
            return Decimal(exp) == Decimal(found)
        if kind == "set":
            return set(exp.split(",")) == set(got.split(","))
    except (ValueError, TypeError, InvalidOperation):
        return False
    return False


def _ends(label: str, parts: int) -> str:
    """The first part of an entity id after cutting `parts` '/'-separated parts off its end
    (a screening number may itself contain '/': cut from the right)."""
    return label.rsplit("/", parts)[0]


# --- the replay ---------------------------------------------------------------------------------
Key = tuple[str, str, Any]
Fold = dict[Key, tuple[int, str | None]]


class _Replay:
    def __init__(self, s: Session, protocol: Protocol | None, report: ReplayReport):
        self.s, self.protocol, self.report = s, protocol, report
        self.codes = [v.code for v in protocol.visits] if protocol else []
        self.tables: set[str] = set()  # items the trail names with a row: S01-001/SCR/cm/X
        self._schedules: dict[date | None, dict[str, Any]] = {}

    # -- helpers --
    def add(self, *args: Any, **kw: Any) -> None:
        self.report.add(Discrepancy(*args, **kw))

    def schedule_of(self, baseline: date | None) -> dict[str, Any]:
        if baseline not in self._schedules:
            assert self.protocol is not None
            self._schedules[baseline] = {pv.code: pv for pv in schedule(self.protocol,
                                                                        baseline)}
        return self._schedules[baseline]

    def compare(self, fold: Fold, entity: str, label: str, fields: Iterable[tuple[str, str]],
                row: dict[str, Any], defaults: dict[str, str] | None = None) -> None:
        """Compare the stored fields of one row with the fold; pop what was compared."""
        for name, kind in fields:
            eid, expected = fold.pop((entity, label, name), (None, None))
            self.report.rows += 1
            found = row[name]
            if not _same(kind, expected, found, (defaults or {}).get(name)):
                self.add(CHANGED if eid is not None else UNAUDITED, entity, label, name,
                         expected, audit_text(found), eid)

    # -- the subject-scoped entities, a batch of subject ids at a time --
    def subjects(self) -> None:
        ev = AuditEvent.__table__.c
        ids = set(self.s.execute(select(ev.subject_id).where(ev.subject_id.is_not(None))
                                 .distinct()).scalars())
        ids |= set(self.s.execute(select(Subject.id)).scalars())
        ordered = sorted(ids)
        for i in range(0, len(ordered), BATCH_SUBJECTS):
            chunk = ordered[i:i + BATCH_SUBJECTS]
            self.batch(chunk[0], chunk[-1])

    def batch(self, lo: int, hi: int) -> None:
        s = self.s
        ev = AuditEvent.__table__.c
        fold: Fold = {}
        seen: set[tuple[str, str]] = set()  # (entity, entity id) with any event
        owner: dict[int, str] = {}  # subject id -> the screening number its events name
        first_baseline: dict[str, str | None] = {}
        threads: dict[str, list[str]] = defaultdict(list)
        sig_reasons: dict[str, str] = {}
        self.tables = set()
        self.baselines: dict[str, str | None] = {}  # screening number -> audited baseline
        rows = s.execute(select(ev.id, ev.entity, ev.entity_id, ev.field, ev.new_value,
                                ev.reason, ev.subject_id)
                         .where(ev.subject_id.between(lo, hi))
                         .order_by(ev.subject_id, ev.id))
        n = 0
        for eid, entity, entity_id, fld, new, reason, sid in rows:
            n += 1
            if entity == "item":
                if entity_id.endswith("]"):
                    base, _, k = entity_id[:-1].rpartition("[")
                    try:
                        key: Key = ("item", base, int(k) - 1)
                        self.tables.add(base)
                    except ValueError:
                        key = ("item", entity_id, 0)
                else:
                    key = ("item", entity_id, 0)
                fold[key] = (eid, new)
                continue
            if entity not in SUBJECT_SCOPED:
                continue
            seen.add((entity, entity_id))
            if entity == "subject":
                owner[sid] = entity_id
                if fld == "baseline_date" and entity_id not in first_baseline:
                    first_baseline[entity_id] = new
            elif entity == "query":
                threads[entity_id].append(reason)
            elif entity == "signature" and fld == "meaning":
                sig_reasons[entity_id] = reason
            elif entity == "merge_conflict" and fld != "resolution":
                fld, new = "created", "created"
            fold[(entity, entity_id, fld)] = (eid, new)
        self.report.events += n
        form_seen = {_ends(k[1], 1) for k in fold if k[0] == "item"}
        keys = self.subject_rows(lo, hi, fold, owner, first_baseline)
        present = self.visit_rows(lo, hi, fold, keys, first_baseline)
        present_forms = self.form_rows(lo, hi, fold, keys, form_seen, seen)
        self.item_rows(lo, hi, fold, keys)
        self.log_rows(lo, hi, fold, keys, seen)
        self.signoff_rows(lo, hi, fold, seen, threads, sig_reasons)
        self.leftovers(fold, set(keys.values()), present, present_forms)

    def subject_rows(self, lo: int, hi: int, fold: Fold, owner: dict[int, str],
                     first_baseline: dict[str, str | None]) -> dict[int, str]:
        """Compare the subjects; return {subject id: screening number its events use}."""
        keys: dict[int, str] = {}
        q = (select(Subject.id, Subject.screening_number, Site.code.label("site"),
                    *(getattr(Subject, f) for f, _ in SUBJECT_FIELDS if f != "site"))
             .outerjoin(Site, Site.id == Subject.site_id).where(Subject.id.between(lo, hi)))
        for row in self.s.execute(q).mappings():
            number = row["screening_number"]
            key = owner.get(row["id"])
            if key is None:
                self.add(UNAUDITED, "subject", number, note="no audit event created this "
                         "subject (inserted behind the app's back); its visits, forms and "
                         "values are not compared")
                continue
            if key != number:
                self.add(CHANGED, "subject", key, "screening_number", key, number,
                         note=f"the screening number was changed to {number!r} behind the "
                              "app's back (the audit trail names the subject "
                              f"{key!r})")
            keys[row["id"]] = key
            self.baselines[key] = fold.get(("subject", key, "baseline_date"), (0, None))[1]
            status_date = fold.get(("subject", key, "status_date"))
            status = fold.get(("subject", key, "status"))
            if status is not None and status[1] == SubjectStatus.SCREEN_FAILED and \
                    (status_date is None or status_date[0] < status[0]) and \
                    self._eligibility_date_ok(status[0], row["status_date"]):
                fold.pop(("subject", key, "status_date"), None)
                row = {**row, "status_date": None}
            self.compare(fold, "subject", key, SUBJECT_FIELDS, row)
        return keys

    def _eligibility_date_ok(self, event_id: int, stored: date | None) -> bool:
        """forms.save_form sets status_date (unaudited) when the eligibility form fails."""
        if stored is None:
            return False
        ev = AuditEvent.__table__.c
        found = self.s.execute(select(ev.occurred_at, ev.reason).where(ev.id == event_id)
                               ).first()
        if found is None or found.reason != ELIGIBILITY_REASON:
            return False
        return abs((found.occurred_at.date() - stored).days) <= 1

    def visit_rows(self, lo: int, hi: int, fold: Fold, keys: dict[int, str],
                   first_baseline: dict[str, str | None]) -> set[str]:
        present: set[str] = set()
        by_subject: dict[int, set[str]] = defaultdict(set)
        q = select(Visit.id, Visit.subject_id, Visit.visit_code, Visit.sequence,
                   Visit.planned_date, Visit.window_start, Visit.window_end, Visit.actual_date,
                   Visit.status, Visit.deviation).where(Visit.subject_id.between(lo, hi))
        for row in self.s.execute(q).mappings():
            key = keys.get(row["subject_id"])
            if key is None:
                continue  # subject unaudited (reported) or gone (orphan, reported)
            code = row["visit_code"]
            label = f"{key}/{code}"
            present.add(label)
            by_subject[row["subject_id"]].add(code)
            defaults = dict(VISIT_DEFAULTS)
            if self.protocol is not None:
                if code not in self.codes and not any(
                        (("visit", label, f) in fold) for f, _ in VISIT_FIELDS):
                    self.add(UNAUDITED, "visit", label,
                             note="this visit is not in the protocol schedule and no audit "
                                  "event recorded it (inserted behind the app's back)")
                    continue
                if code in self.codes:
                    defaults.update(self._derived(fold, key, code, row, label,
                                                  first_baseline))
            self.compare(fold, "visit", label, VISIT_FIELDS, row, defaults)
        if self.protocol is not None:
            for sid, key in keys.items():
                for code in self.codes:
                    if code not in by_subject.get(sid, ()) and not any(
                            fold.get(("visit", f"{key}/{code}", f), (0, None))[1] is not None
                            for f, _ in VISIT_FIELDS):
                        self.add(MISSING, "visit", f"{key}/{code}",
                                 note="missing: the protocol schedules this visit for every "
                                      "subject (deleted behind the app's back)")
        return present

    def _derived(self, fold: Fold, key: str, code: str, row: dict[str, Any], label: str,
                 first_baseline: dict[str, str | None]) -> dict[str, str]:
        """Check the columns derived from the schedule; return the planned date's default."""
        defaults: dict[str, str] = {}
        first = first_baseline.get(key)
        try:
            planned = self.schedule_of(date.fromisoformat(first) if first else None)[code]
        except ValueError:
            planned = None
        if planned is not None and planned.planned is not None:
            defaults["planned_date"] = planned.planned.isoformat()
        baseline = self.baselines.get(key)
        if baseline is None:
            return defaults
        try:
            pv = self.schedule_of(date.fromisoformat(baseline))[code]
        except ValueError:
            return defaults
        for name, want in (("window_start", pv.window_start), ("window_end", pv.window_end),
                           ("sequence", pv.sequence)):
            self.report.rows += 1
            if row[name] != want:
                self.add(CHANGED, "visit", label, name, audit_text(want), audit_text(row[name]),
                         note=f"stored {_show(audit_text(row[name]))}, but the protocol "
                              f"schedule from the audited baseline {baseline} gives "
                              f"{_show(audit_text(want))} — changed behind the app's back")
        return defaults

    def form_rows(self, lo: int, hi: int, fold: Fold, keys: dict[int, str],
                  form_seen: set[str], seen: set[tuple[str, str]]) -> set[str]:
        present: set[str] = set()
        q = (select(FormInstance.id, Visit.subject_id, Visit.visit_code, FormInstance.form_id,
                    FormInstance.status)
             .join(Visit, Visit.id == FormInstance.visit_id)
             .where(Visit.subject_id.between(lo, hi)))
        for _fid, sid, code, form_id, status in self.s.execute(q):
            key = keys.get(sid)
            if key is None:
                continue
            label = f"{key}/{code}/{form_id}"
            present.add(label)
            self.report.rows += 1
            eid, expected = fold.pop(("form", label, "status"), (None, None))
            if eid is None:
                if label not in form_seen and ("form", label) not in seen:
                    self.add(UNAUDITED, "form", label, "status", None, status,
                             note=f"stored (status {status!r}) but no audit event created it or "
                                  "any of its values — inserted behind the app's back")
                continue  # a form created by an ODM import: its status is not audited
            if not _same("text", expected, status):
                self.add(CHANGED, "form", label, "status", expected, status, eid)
        return present

    def item_rows(self, lo: int, hi: int, fold: Fold, keys: dict[int, str]) -> None:
        q = (select(Visit.subject_id, Visit.visit_code, FormInstance.form_id, ItemValue.item_id,
                    ItemValue.row_index, ItemValue.value)
             .join(FormInstance, FormInstance.id == ItemValue.form_instance_id)
             .join(Visit, Visit.id == FormInstance.visit_id)
             .where(Visit.subject_id.between(lo, hi)))
        for sid, code, form_id, item_id, row_index, value in self.s.execute(q):
            key = keys.get(sid)
            if key is None:
                continue
            base = f"{key}/{code}/{form_id}/{item_id}"
            self.report.rows += 1
            eid, expected = fold.pop(("item", base, row_index), (None, None))
            if expected == value:
                continue
            label = self.item_label(base, row_index)
            if eid is None:
                self.add(UNAUDITED, "item", label, "", None, value)
            elif expected is None:
                self.add(CHANGED, "item", label, "", None, value, eid,
                         note=f"stored {_show(value)}, but the audit trail says the value was "
                              "removed — written behind the app's back")
            else:
                self.add(CHANGED, "item", label, "", expected, value, eid)

    def log_rows(self, lo: int, hi: int, fold: Fold, keys: dict[int, str],
                 seen: set[tuple[str, str]]) -> None:
        ae_cols = [getattr(AdverseEvent, f) for f, _ in AE_FIELDS if f != "criteria"]
        crit = [getattr(AdverseEvent, c) for c in CRITERIA_COLUMNS.values()]
        q = select(AdverseEvent.subject_id, AdverseEvent.sequence, *ae_cols, *crit).where(
            AdverseEvent.subject_id.between(lo, hi))
        for row in self.s.execute(q).mappings():
            key = keys.get(row["subject_id"])
            if key is None:
                continue
            label = f"{key}/AE{row['sequence']}"
            values = dict(row)
            values["criteria"] = ",".join(code for code, col in CRITERIA_COLUMNS.items()
                                          if row[col]) or None
            if ("adverse_event", label) not in seen:
                self.report.rows += 1
                self.add(UNAUDITED, "adverse_event", label, note=f"stored (term "
                         f"{row['term']!r}, start {row['start_date']}) but no audit event "
                         "created it — inserted behind the app's back")
                continue
            self.compare(fold, "adverse_event", label, AE_FIELDS, values)
        cols = {"date": DosingRecord.dose_date, "time": DosingRecord.dose_time}
        q = select(DosingRecord.id, DosingRecord.subject_id,
                   *(cols.get(f, getattr(DosingRecord, f, None)).label(f)
                     for f, _ in DOSE_FIELDS)).where(DosingRecord.subject_id.between(lo, hi))
        for row in self.s.execute(q).mappings():
            key = keys.get(row["subject_id"])
            if key is None:
                continue
            label = f"{key}/dose/{row['id']}"
            if ("dose", label) not in seen:
                self.report.rows += 1
                self.add(UNAUDITED, "dose", label, note=f"stored (date {row['date']}) but no "
                         "audit event created it — inserted behind the app's back")
                continue
            self.compare(fold, "dose", label, DOSE_FIELDS, row)

    def signoff_rows(self, lo: int, hi: int, fold: Fold, seen: set[tuple[str, str]],
                     threads: dict[str, list[str]], sig_reasons: dict[str, str]) -> None:
        s = self.s
        messages: dict[int, list[str]] = defaultdict(list)
        for qid, text in s.execute(
                select(QueryMessage.query_id, QueryMessage.text).join(Query)
                .where(Query.subject_id.between(lo, hi)).order_by(QueryMessage.id)):
            messages[qid].append(text)
        for qid, state in s.execute(select(Query.id, Query.state)
                                    .where(Query.subject_id.between(lo, hi))):
            label = str(qid)
            if self._unaudited("query", label, seen, f"state {state!r}"):
                continue
            self.compare(fold, "query", label, (("state", "text"),), {"state": state})
            said, stored = threads.get(label, []), messages.get(qid, [])
            self.report.rows += 1
            if said != stored:
                self._thread(label, said, stored)
        for vid, cleared in s.execute(select(Verification.id, Verification.cleared_at)
                                      .where(Verification.subject_id.between(lo, hi))):
            label = str(vid)
            state = "cleared" if cleared is not None else "verified"
            if not self._unaudited("verification", label, seen, state):
                self.compare(fold, "verification", label, (("state", "text"),),
                             {"state": state})
        for sid, state, meaning, values_hash in s.execute(
                select(Signature.id, Signature.state, Signature.meaning, Signature.values_hash)
                .where(Signature.subject_id.between(lo, hi))):
            label = str(sid)
            if self._unaudited("signature", label, seen, f"meaning {meaning!r}"):
                continue
            self.compare(fold, "signature", label, (("meaning", "text"), ("state", "text")),
                         {"meaning": meaning, "state": state}, {"state": "valid"})
            reason = sig_reasons.get(label)
            if reason is not None and f"sha256 {values_hash[:16]}" not in reason:
                self.add(CHANGED, "signature", label, "values_hash", None, values_hash,
                         note=f"the stored hash of the signed values ({values_hash[:16]}…) is "
                              f"not the one the audit trail recorded ({reason!r}) — changed "
                              "behind the app's back")
        for cid, state, resolution in s.execute(
                select(MergeConflict.id, MergeConflict.state, MergeConflict.resolution)
                .where(MergeConflict.subject_id.between(lo, hi))):
            label = str(cid)
            if self._unaudited("merge_conflict", label, seen, f"state {state!r}"):
                continue
            fold.pop(("merge_conflict", label, "created"), None)
            eid, chosen = fold.pop(("merge_conflict", label, "resolution"), (None, None))
            self.report.rows += 1
            if chosen is not None and (state, resolution) != ("resolved", chosen):
                self.add(CHANGED, "merge_conflict", label, "resolution", chosen,
                         f"{state}/{resolution}", eid)
            elif chosen is None and (state not in ("open", "superseded")
                                     or resolution is not None):
                self.add(CHANGED, "merge_conflict", label, "state", "open",
                         f"{state}/{resolution}", None,
                         note=f"stored as {state!r} (resolution {resolution!r}) but the audit "
                              "trail records no resolution — changed behind the app's back")

    def _unaudited(self, entity: str, label: str, seen: set[tuple[str, str]],
                   what: str) -> bool:
        if (entity, label) in seen:
            return False
        self.report.rows += 1
        self.add(UNAUDITED, entity, label, note=f"stored ({what}) but no audit event created "
                                                "it — inserted behind the app's back")
        return True

    def _thread(self, label: str, said: list[str], stored: list[str]) -> None:
        for i, (a, b) in enumerate(zip(said, stored, strict=False), start=1):
            if a != b:
                self.add(CHANGED, "query", label, f"message {i}", a, b)
                return
        self.add(CHANGED, "query", label, "messages", str(len(said)), str(len(stored)),
                 note=f"the thread holds {len(stored)} messages but the audit trail records "
                      f"{len(said)} — messages {'added' if len(stored) > len(said) else 'deleted'}"
                      " behind the app's back")

    def leftovers(self, fold: Fold, subjects: set[str], visits: set[str],
                  forms: set[str]) -> None:
        """What the audit trail says exists but was not found: one line per missing row."""
        gone: dict[tuple[str, str], tuple[int, int]] = {}  # (entity, id) -> (first event, n)
        values: list[tuple[Key, int, str | None]] = []

        def count(entity: str, label: str, eid: int) -> None:
            first, n = gone.get((entity, label), (eid, 0))
            gone[(entity, label)] = (min(first, eid), n + 1)

        for key, (eid, expected) in fold.items():
            entity, label, _name = key
            if expected is None:
                continue
            if entity == "subject":
                count("subject", label, eid)
                continue
            if entity in ("visit", "form", "item", "adverse_event", "dose"):
                parts = {"visit": 1, "form": 2, "item": 3, "adverse_event": 1, "dose": 2}
                number = _ends(label, parts[entity])
                if number not in subjects:
                    count("subject", number, eid)
                    continue
                if entity in ("form", "item"):
                    visit = _ends(label, parts[entity] - 1)
                    if visit not in visits:
                        count("visit", visit, eid)
                        continue
                    if entity == "item":
                        form = _ends(label, 1)
                        if form not in forms:
                            count("form", form, eid)
                            continue
                        values.append((key, eid, expected))
                        continue
                count(entity, label, eid)
                continue
            count(entity, label, eid)
        for (entity, label), (eid, n) in sorted(gone.items(), key=lambda kv: kv[1][0]):
            what = {"subject": "the subject", "visit": "the visit", "form": "the form"}.get(
                entity, "the record")
            self.add(MISSING, entity, label, event_id=eid,
                     note=f"missing: {what} was deleted behind the app's back (the audit trail "
                          f"holds {n} value{'s' if n != 1 else ''} for it, first set by event "
                          f"#{eid})")
        for (_, base, row), eid, expected in values:
            self.add(MISSING, "item", self.item_label(base, row), "", expected, None, eid)

    def item_label(self, base: str, row: int) -> str:
        """The audit entity id of a value: S01-001/SCR/conmeds/CMTRT[2] in a table."""
        return f"{base}[{row + 1}]" if row or base in self.tables else base

    # -- the global entities --
    def global_rows(self) -> None:
        s = self.s
        ev = AuditEvent.__table__.c
        fold: Fold = {}
        seen: set[tuple[str, str]] = set()
        for eid, action, entity, entity_id, fld, new in s.execute(
                select(ev.id, ev.action, ev.entity, ev.entity_id, ev.field, ev.new_value)
                .where(ev.entity.in_(GLOBAL), ev.subject_id.is_(None)
                       | (ev.entity == "lock")).order_by(ev.id)):
            self.report.events += 1
            if entity == "odm_file":
                fold[(entity, entity_id, action)] = (eid, new)
            elif entity == "lock" and action == "create":
                fold[(entity, entity_id, "created")] = (eid, f"{fld}:{new}")
            elif entity == "user":
                if action in ("create", "update", "login_failed") and fld:
                    fold[(entity, entity_id, fld)] = (eid, new)
                    seen.add((entity, entity_id))
                continue
            else:
                fold[(entity, entity_id, fld)] = (eid, new)
            seen.add((entity, entity_id))
        for row in s.execute(select(User.username, User.full_name, User.role,
                                    Site.code.label("site"), User.active, User.failed_logins)
                             .outerjoin(Site, Site.id == User.site_id)).mappings():
            name = row["username"]
            if self._unaudited("user", name, seen, f"role {row['role']!r}"):
                continue
            values = {**row, "site": row["site"] or "all sites"}
            self.compare(fold, "user", name, USER_FIELDS, values, {"failed_logins": "0"})
        for code, name in s.execute(select(Site.code, Site.name)):
            if not self._unaudited("site", code, seen, f"name {name!r}"):
                self.compare(fold, "site", code, (("name", "text"),), {"name": name})
        for oid, title in s.execute(select(Study.oid, Study.title)):
            if not self._unaudited("study", oid, seen, f"title {title!r}"):
                self.compare(fold, "study", oid, (("", "text"),), {"": title})
        for oid, version in s.execute(select(Study.oid, MetadataVersion.version)
                                      .join(Study, Study.id == MetadataVersion.study_id)):
            label = f"{oid}/{version}"
            self.report.rows += 1
            if not self._unaudited("metadata_version", label, seen, "protocol and forms"):
                fold.pop(("metadata_version", label, ""), None)
        for lid, scope, target, unlocked in s.execute(
                select(Lock.id, Lock.scope, Lock.target_id, Lock.unlocked_at)):
            label = str(lid)
            if self._unaudited("lock", label, seen, f"{scope} {target}"):
                continue
            self.compare(fold, "lock", label, (("created", "text"), ("state", "text")),
                         {"created": f"{scope}:{target}",
                          "state": "unlocked" if unlocked is not None else None})
        for model, action in ((ExportedFile, "export"), (ImportedFile, "import")):
            for (oid,) in s.execute(select(model.file_oid)):
                self.report.rows += 1
                if fold.pop(("odm_file", oid, action), None) is None:
                    self.add(UNAUDITED, "odm_file", oid, note=f"recorded as {action}ed but no "
                             "audit event says so — inserted behind the app's back")
        gone: dict[tuple[str, str], int] = {}
        for (entity, label, _name), (eid, expected) in fold.items():
            if expected is not None or entity in ("odm_file", "metadata_version"):
                gone[(entity, label)] = min(eid, gone.get((entity, label), eid))
        for (entity, label), eid in sorted(gone.items(), key=lambda kv: kv[1]):
            what = {"user": "the account", "site": "the site", "study": "the study",
                    "lock": "the lock", "metadata_version": "the study's metadata version",
                    "odm_file": "the record of this exchanged file"}[entity]
            self.add(MISSING, entity, label, event_id=eid,
                     note=f"missing: {what} was deleted behind the app's back")

    # -- rows whose parent is gone --
    ORPHANS = (
        ("visit", Visit.subject_id, Subject.id, "visits belong to no subject"),
        ("form_instance", FormInstance.visit_id, Visit.id, "forms belong to no visit"),
        ("item_value", ItemValue.form_instance_id, FormInstance.id,
         "item values belong to no form"),
        ("adverse_event", AdverseEvent.subject_id, Subject.id,
         "adverse events belong to no subject"),
        ("dosing_record", DosingRecord.subject_id, Subject.id,
         "dosing records belong to no subject"),
        ("query", Query.subject_id, Subject.id, "queries belong to no subject"),
        ("query_message", QueryMessage.query_id, Query.id, "query messages belong to no query"),
        ("verification", Verification.subject_id, Subject.id,
         "verifications belong to no subject"),
        ("signature", Signature.subject_id, Subject.id, "signatures belong to no subject"),
        ("merge_conflict", MergeConflict.subject_id, Subject.id,
         "merge conflicts belong to no subject"),
    )

    def orphans(self) -> None:
        for table, fk, pk, what in self.ORPHANS:
            n = self.s.execute(select(func.count()).select_from(fk.class_).where(
                fk.not_in(select(pk)))).scalar() or 0
            if n:
                self.add(ORPHAN, table, f"({n} rows)", note=f"{n} {what}: their parent row was "
                         "deleted behind the app's back")


def replay_audit(db: Database) -> ReplayReport:
    """Replay the audit trail against the stored data; every discrepancy is named."""
    from crf_app.services.context import load_study

    start = _clock.perf_counter()
    report = ReplayReport()
    try:
        protocol: Protocol | None = load_study(db).protocol
    except CrfError as exc:
        protocol = None
        report.notes.append(f"visit schedule not checked: {exc}")
    with db.reading() as s:
        _snapshot(s)
        replay = _Replay(s, protocol, report)
        replay.subjects()
        replay.global_rows()
        replay.orphans()
    report.seconds = _clock.perf_counter() - start
    return report

