"""The dosing log: record and correct administrations, the quick "usual day", compliance.

The rules are the domain's (`crf_app.domain.dosing`, `crf_app.domain.compliance`). A broken
rule refuses the save; a finding (dose outside the regimen, daily maximum, course too long,
washout…) is saved and opens an automatic query on the record; a warning (given after 18:00)
is saved and returned for the GUI to show. One transaction per action, audited field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, time, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from crf_app.domain.addresses import dose_address
from crf_app.domain.compliance import compliance, course_compliance
from crf_app.domain.coverage import Content
from crf_app.domain.dosing import (
    DoseContext,
    DoseInput,
    DoseRecord,
    usual_day,
    validate_dose,
)
from crf_app.domain.errors import (
    FieldError,
    NotFound,
    ReasonRequired,
    StaleData,
    ValidationFailed,
)
from crf_app.domain.protocol import RegimenDef
from crf_app.domain.roles import Action, allowed
from crf_app.domain.subjects import SubjectStatus
from crf_app.services.context import UserContext
from crf_app.services.pipeline import write, write_action
from crf_app.storage.audit import AuditWriter
from crf_app.storage.log_models import DosingRecord
from crf_app.storage.models import Query, QueryMessage, Subject

SYSTEM_USER = "system (dosing check)"
QUERY_TARGET = "dose"
_FIELDS = ("date", "time", "dose_mg", "instillations", "nostril", "route", "lot", "given_by",
           "missed", "missed_reason")
_COLUMNS = {"date": "dose_date", "time": "dose_time"}


@dataclass(frozen=True)
class DoseOutcome:
    """A saved administration: its findings each opened a query; warnings are for the user."""

    id: int
    row_version: int
    findings: list[FieldError] = field(default_factory=list)
    warnings: list[FieldError] = field(default_factory=list)
    queries_opened: list[str] = field(default_factory=list)
    queries_closed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DoseRow:
    id: int
    date: date
    time: time | None
    dose_mg: Decimal | None
    instillations: int
    total_mg: Decimal
    nostril: str
    route: str
    lot: str
    given_by: str
    missed: bool
    missed_reason: str
    study_day: int | None
    findings: tuple[str, ...]
    warnings: tuple[str, ...]
    open_queries: tuple[str, ...]
    row_version: int
    updated_by: str


@dataclass(frozen=True)
class DoseFormContext:
    """What the dosing dialogs need to check input as the user types."""

    subject_id: int
    screening_number: str
    regimen: RegimenDef
    context: DoseContext
    can_edit: bool


@dataclass(frozen=True)
class CourseRow:
    number: int
    start: date
    end: date
    days: int
    planned: int
    given: int
    above_plan: int
    missed_records: int
    percent: float | None


@dataclass(frozen=True)
class SubjectCompliance:
    """Instillations given against planned, in total and per course."""

    planned: int
    given: int
    percent: float | None
    courses: list[CourseRow]

    @property
    def label(self) -> str:
        if not self.planned:
            return "Compliance: nothing planned yet"
        per_course = "; ".join(f"course {c.number} {c.start:%d %b}–{c.end:%d %b}: "
                               f"{c.given}/{c.planned} ({c.percent:.0f} %)"
                               for c in self.courses if c.percent is not None)
        text = f"Compliance: {self.given} of {self.planned} planned instillations " \
               f"({self.percent:.1f} %)"
        return text + (f" — {per_course}" if len(self.courses) > 1 else "")


# --- helpers ------------------------------------------------------------------------------
def subject_regimen(ctx: UserContext, subj: Subject) -> RegimenDef:
    protocol = ctx.study.protocol
    return protocol.regimen(protocol.arm(subj.arm).regimen)


def _subject(s: Session, ctx: UserContext, subject_id: int) -> Subject:
    subj = s.get(Subject, subject_id)
    if subj is None or subj.study_id != ctx.study.study_id:
        raise NotFound(f"subject {subject_id} does not exist in this study")
    return subj


def to_record(r: DosingRecord) -> DoseRecord:
    return DoseRecord(r.dose_date, r.dose_time, r.dose_mg, r.instillations, r.nostril, r.route,
                      r.lot, r.given_by, r.missed, r.missed_reason)


def dosing_records(s: Session, subject_id: int) -> list[DosingRecord]:
    return list(s.execute(select(DosingRecord).where(DosingRecord.subject_id == subject_id)
                          .order_by(DosingRecord.dose_date,
                                    DosingRecord.dose_time.asc().nulls_first(),  # as SQLite
                                    DosingRecord.id)).scalars())


def _context(ctx: UserContext, subj: Subject, existing: list[DoseRecord]) -> DoseContext:
    return DoseContext(subject_regimen(ctx, subj), subj.baseline_date is not None,
                       subj.baseline_date, existing, ctx.today())


def _values(rec: DoseRecord) -> dict[str, object]:
    return {f: getattr(rec, f) for f in _FIELDS}


def _stored(r: DosingRecord) -> dict[str, object]:
    return _values(to_record(r))


def _apply(r: DosingRecord, rec: DoseRecord) -> None:
    for f in _FIELDS:
        setattr(r, _COLUMNS.get(f, f), getattr(rec, f))


def _label(subj: Subject, r: DosingRecord) -> str:
    return dose_address(subj.screening_number, r.id)


def _sync_queries(s: Session, audit: AuditWriter, ctx: UserContext, subj: Subject,
                  r: DosingRecord, findings: list[FieldError]) -> tuple[list[str], list[str]]:
    """Open a query per new finding on the record; close automatic ones no longer found."""
    now = ctx.now()
    wanted = {(f.field, f.rule): f for f in findings}
    existing = {(q.item_id, q.rule): q for q in s.execute(
        select(Query).where(Query.subject_id == subj.id, Query.target == QUERY_TARGET,
                            Query.row_index == r.id, Query.origin == "auto",
                            Query.state != "closed")).scalars()}
    opened, closed = [], []
    for key, finding in wanted.items():
        if key in existing:
            continue
        q = Query(subject_id=subj.id, visit_id=None, form_instance_id=None, item_id=key[0],
                  row_index=r.id, target=QUERY_TARGET, origin="auto", rule=key[1],
                  state="open", opened_at=now, opened_by=SYSTEM_USER)
        q.messages.append(QueryMessage(at=now, by=SYSTEM_USER, kind="open",
                                       text=finding.message))
        s.add(q)
        s.flush()
        audit.record("create", "query", q.id, field="state", new="open",
                     reason=finding.message, subject_id=subj.id)
        opened.append(finding.message)
    for key, q in existing.items():
        if key in wanted:
            continue
        text = "Closed automatically: the corrected record passes the check"
        q.messages.append(QueryMessage(at=now, by=SYSTEM_USER, kind="close", text=text))
        audit.record("update", "query", q.id, field="state", old=q.state, new="closed",
                     reason=text, subject_id=subj.id)
        q.state, q.closed_at, q.closed_by = "closed", now, SYSTEM_USER
        closed.append(q.messages[0].text if q.messages else q.rule)
    return opened, closed


def _insert(s: Session, audit: AuditWriter, ctx: UserContext, subj: Subject, raw: DoseInput,
            existing: list[DoseRecord]) -> tuple[DoseOutcome, DoseRecord]:
    result = validate_dose(raw, _context(ctx, subj, existing))
    if result.value is None:
        raise ValidationFailed(result.errors)
    now = ctx.now()
    r = DosingRecord(subject_id=subj.id, created_at=now, created_by=ctx.user.username,
                     updated_at=now, updated_by=ctx.user.username,
                     findings=",".join(f.rule for f in result.findings),
                     warnings=",".join(w.rule for w in result.warnings))
    _apply(r, result.value)
    s.add(r)
    s.flush()
    changes: dict[str, tuple[object, object]] = {  # empty fields are not audited as created
        f: (None, None if v == "" else v) for f, v in _values(result.value).items()}
    changes["findings"] = (None, r.findings or None)
    audit.record_fields("create", "dose", _label(subj, r), changes, subject_id=subj.id)
    opened, _closed = _sync_queries(s, audit, ctx, subj, r, result.findings)
    outcome = DoseOutcome(r.id, r.row_version, result.findings, result.warnings, opened)
    return outcome, result.value


# --- actions ------------------------------------------------------------------------------
def dose_form_context(ctx: UserContext, subject_id: int,
                      exclude_id: int | None = None) -> DoseFormContext:
    """The regimen and other records the dose rules need (leave out the record being edited)."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        subj = _subject(s, ctx, subject_id)
        ctx.require(Action.VIEW, subj.site.code)
        existing = [to_record(r) for r in dosing_records(s, subj.id) if r.id != exclude_id]
        return DoseFormContext(subj.id, subj.screening_number, subject_regimen(ctx, subj),
                               _context(ctx, subj, existing),
                               allowed(ctx.user.role, Action.EDIT_DATA))


@write_action("record_dose", Action.EDIT_DATA)
def record_dose(ctx: UserContext, subject_id: int, raw: DoseInput) -> DoseOutcome:
    """Record one administration or missed dose; findings are saved and open queries.

    A subject never randomised (no baseline date) cannot receive study drug: refused.
    """
    with write(ctx, "record_dose") as w:
        s = w.session
        subj = _subject(s, ctx, subject_id)
        w.authorise_subject(subj)
        existing = [to_record(r) for r in dosing_records(s, subj.id)]
        outcome, _rec = _insert(s, w.audit, ctx, subj, raw, existing)
        w.changed(Content.DOSE, subj.id)
        return outcome


@write_action("record_usual_day", Action.EDIT_DATA)
def record_usual_day(ctx: UserContext, subject_id: int, day: date, start_time: time,
                     lot: str, given_by: str = "SELF") -> list[DoseOutcome]:
    """The quick daily entry: the regimen's usual administrations of `day`, all or none.

    Refused when the day already has records (enter or correct those one by one).
    """
    with write(ctx, "record_usual_day") as w:
        s = w.session
        subj = _subject(s, ctx, subject_id)
        w.authorise_subject(subj)
        stored = dosing_records(s, subj.id)
        errs = []
        if same_day := [r for r in stored if r.dose_date == day]:
            errs.append(FieldError("date", "day_has_records",
                                   f"{day.isoformat()} already has {len(same_day)} dosing "
                                   "record(s); add or correct administrations one by one"))
        try:
            planned = usual_day(subject_regimen(ctx, subj), day, start_time, lot=lot,
                                given_by=given_by)
        except ValueError:
            errs.append(FieldError("time", "late_start",
                                   "The usual day must start at 18:00 at the latest"))
            planned = []
        if errs:
            raise ValidationFailed(errs)
        existing = [to_record(r) for r in stored]
        w.changed(Content.DOSE, subj.id)
        outcomes = []
        for raw in planned:
            outcome, rec = _insert(s, w.audit, ctx, subj, raw, existing)
            existing.append(rec)
            outcomes.append(outcome)
        return outcomes


@write_action("update_dose", Action.EDIT_DATA)
def update_dose(ctx: UserContext, dose_id: int, raw: DoseInput, reason: str = "",
                expected_version: int | None = None) -> DoseOutcome:
    """Correct a dosing record: reason for change required, stale copies refused.

    Its automatic queries follow the corrected record: new findings open one, findings that
    no longer hold close theirs.
    """
    reason = reason.strip()
    with write(ctx, "update_dose") as w:
        s = w.session
        r = s.get(DosingRecord, dose_id)
        subj = s.get(Subject, r.subject_id) if r is not None else None
        if r is None or subj is None or subj.study_id != ctx.study.study_id:
            raise NotFound(f"dosing record {dose_id} does not exist in this study")
        w.authorise_subject(subj)
        if expected_version is not None and expected_version != r.row_version:
            at = r.updated_at.astimezone().strftime("%Y-%m-%d %H:%M") if r.updated_at else "?"
            raise StaleData(f"This dosing record was changed by {r.updated_by} at {at} since "
                            "you opened it — reload it; your entries were not saved")
        existing = [to_record(x) for x in dosing_records(s, subj.id) if x.id != r.id]
        result = validate_dose(raw, _context(ctx, subj, existing))
        if result.value is None:
            raise ValidationFailed(result.errors)
        old, new = _stored(r), _values(result.value)
        changed = [f for f in _FIELDS if old[f] != new[f]]
        if any(old[f] not in (None, "") for f in changed) and not reason:
            raise ReasonRequired()
        now = w.now
        audit = w.audit
        if changed:
            w.changed(Content.DOSE, subj.id)
        findings = ",".join(f.rule for f in result.findings)
        changes = {f: (old[f], new[f]) for f in changed}
        changes["findings"] = (r.findings or None, findings or None)
        audit.record_fields("update", "dose", _label(subj, r), changes, reason=reason,
                            subject_id=subj.id)
        if changed:
            _apply(r, result.value)
            r.updated_at, r.updated_by = now, ctx.user.username
        r.findings = findings
        r.warnings = ",".join(w.rule for w in result.warnings)
        opened, closed = _sync_queries(s, audit, ctx, subj, r, result.findings)
        s.flush()
        return DoseOutcome(r.id, r.row_version, result.findings, result.warnings, opened,
                           closed, changed)


# --- reading ------------------------------------------------------------------------------
def dose_input(row: DoseRow) -> DoseInput:
    """A saved record as the dialog's raw input (to edit it)."""
    return DoseInput(date=row.date.isoformat(),
                     time=row.time.strftime("%H:%M") if row.time else "",
                     dose_mg=format(row.dose_mg, "f") if row.dose_mg is not None else "",
                     instillations=str(row.instillations) if not row.missed else "",
                     nostril=row.nostril, route=row.route, lot=row.lot, given_by=row.given_by,
                     missed=row.missed, missed_reason=row.missed_reason)


def list_doses(ctx: UserContext, subject_id: int) -> list[DoseRow]:
    """A subject's dosing records by date and time, with their open queries."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        subj = _subject(s, ctx, subject_id)
        ctx.require(Action.VIEW, subj.site.code)
        queries: dict[int, list[str]] = {}
        for q in s.execute(select(Query).where(
                Query.subject_id == subj.id, Query.target == QUERY_TARGET,
                Query.state != "closed").order_by(Query.id)).scalars():
            queries.setdefault(q.row_index, []).append(q.messages[0].text if q.messages
                                                       else q.rule)
        base = subj.baseline_date
        return [DoseRow(r.id, r.dose_date, r.dose_time, r.dose_mg, r.instillations,
                        to_record(r).total_mg, r.nostril, r.route, r.lot, r.given_by,
                        r.missed, r.missed_reason,
                        (r.dose_date - base).days + 1 if base else None,
                        tuple(filter(None, r.findings.split(","))),
                        tuple(filter(None, r.warnings.split(","))),
                        tuple(queries.get(r.id, ())), r.row_version,
                        r.updated_by or r.created_by) for r in dosing_records(s, subj.id)]


def compliance_as_of(status: str, status_date: date | None, today: date) -> date:
    """The last day dosing was planned: the end of participation for a subject who left."""
    if status in (SubjectStatus.WITHDRAWN, SubjectStatus.COMPLETED) and status_date:
        return min(status_date, today)
    return today


def compliance_of(records: list[DoseRecord], regimen: RegimenDef, baseline: date | None,
                  today: date) -> SubjectCompliance:
    """Compliance of one subject as of `today` (see `compliance_as_of`).

    A regimen without cycles has one course from the baseline (study day 1) to the last
    dosing day, at least course_days.min days long, so days missed from day 1 on count; a
    cyclic regimen is split into courses by the domain (`course_compliance`).
    """
    if regimen.cycle is None:
        if baseline is None or baseline > today:
            return SubjectCompliance(0, 0, None, [])
        given_days = [r.date for r in records if not r.missed]
        end = max([baseline + timedelta(days=regimen.course_days.min - 1), *given_days])
        c = compliance(records, regimen, baseline, end, as_of=today)
        last = min(end, today)
        rows = [CourseRow(1, baseline, last, c.days, c.planned, c.given, c.above_plan,
                          c.missed_records, c.percent)]
        return SubjectCompliance(c.planned, c.given, c.percent, rows)
    rows = []
    for i, (course, c) in enumerate(course_compliance(records, regimen, as_of=today), 1):
        rows.append(CourseRow(i, course.start, course.end, c.days, c.planned, c.given,
                              c.above_plan, c.missed_records, c.percent))
    planned = sum(r.planned for r in rows)
    given = sum(r.given for r in rows)
    return SubjectCompliance(planned, given,
                             round(100 * given / planned, 1) if planned else None, rows)


def subject_compliance(ctx: UserContext, subject_id: int) -> SubjectCompliance:
    """Instillations given / planned for a subject, in total and per course."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        subj = _subject(s, ctx, subject_id)
        ctx.require(Action.VIEW, subj.site.code)
        records = [to_record(r) for r in dosing_records(s, subj.id)]
        return compliance_of(records, subject_regimen(ctx, subj), subj.baseline_date,
                             compliance_as_of(subj.status, subj.status_date, ctx.today()))
