"""Adverse events: record, correct, assess causality, report SAEs; the SAE alerts.

The rules are the domain's (`crf_app.domain.adverse_events`); this module adds who may do what
and writes the event with its audit trail (field by field, with the reason for change) in one
transaction. Causality (relationship to the study drug) is the investigator's judgement: other
roles record the event without it ("awaiting assessment") and may never set or change it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crf_app.domain.addresses import ae_address
from crf_app.domain.adverse_events import (
    AE_TERMS,
    OTHER,
    SERIOUSNESS_CRITERIA,
    AeCheck,
    AeContext,
    AeInput,
    SaeState,
    raw_text,
    sae_clock_state,
    sae_deadline,
    validate_adverse_event,
)
from crf_app.domain.coverage import Content
from crf_app.domain.errors import (
    FieldError,
    NotFound,
    ReasonRequired,
    StaleData,
    ValidationFailed,
)
from crf_app.domain.roles import Action, allowed
from crf_app.domain.subjects import SubjectStatus
from crf_app.services.context import UserContext
from crf_app.services.pipeline import write, write_action
from crf_app.storage.log_models import AdverseEvent, DosingRecord
from crf_app.storage.models import Site, Subject

# Seriousness criterion code -> its CDASH flag column.
CRITERIA_COLUMNS = {
    "DEATH": "sae_death",
    "LIFE_THREATENING": "sae_life_threatening",
    "HOSPITALISATION": "sae_hospitalisation",
    "DISABILITY": "sae_disability",
    "CONGENITAL_ANOMALY": "sae_congenital_anomaly",
    "MEDICALLY_IMPORTANT": "sae_medically_important",
}
assert set(CRITERIA_COLUMNS) == set(SERIOUSNESS_CRITERIA)
_PENDING = "NOT_RELATED"  # stands in for a not-yet-assessed relationship while checking
# Stored fields in the order they are audited (the flags are system fields: no reason needed).
_FIELDS = ("term", "verbatim", "location", "start_date", "start_time", "end_date", "ongoing",
           "severity", "grade", "serious", "criteria", "relationship", "action", "outcome",
           "treatment")


@dataclass(frozen=True)
class AeFormContext:
    """What the AE dialog needs to check input as the user types, as the service will."""

    subject_id: int
    screening_number: str
    subject_status: str
    context: AeContext
    can_edit: bool
    can_assess: bool


@dataclass(frozen=True)
class AeRow:
    """One adverse event as the AE table and the reports show it."""

    id: int
    subject_id: int
    screening_number: str
    site: str
    sequence: int
    term: str
    term_label: str
    verbatim: str
    location: str
    start_date: date
    start_time: time | None
    end_date: date | None
    ongoing: bool
    severity: str
    grade: int
    serious: bool
    criteria: tuple[str, ...]
    relationship: str | None
    action: str
    outcome: str
    treatment: str
    flags: tuple[str, ...]
    flag_text: tuple[str, ...]
    sae_recorded_at: datetime | None
    sae_reported_at: datetime | None
    sae_deadline: datetime | None
    sae_state: str  # '' (not serious), 'running', 'overdue', 'reported'
    sae_label: str
    row_version: int
    updated_by: str
    updated_at: datetime | None

    @property
    def report_due(self) -> datetime | None:
        """The SAE report deadline while the report is still outstanding, else None."""
        return self.sae_deadline if self.sae_state in ("running", "overdue") else None


@dataclass(frozen=True)
class SaeAlert:
    """A serious adverse event whose report to the sponsor is still outstanding."""

    ae_id: int
    subject_id: int
    screening_number: str
    site: str
    term_label: str
    grade: int
    deadline: datetime
    overdue: bool
    label: str  # "23 h 10 min left to report" / "Overdue by 1 h 05 min"


@dataclass(frozen=True)
class AeSaved:
    id: int
    row_version: int
    changed: list[str]
    flags: list[FieldError]


def check_ae(raw: AeInput, context: AeContext, can_assess: bool) -> AeCheck:
    """The domain check, except that a user who may not assess causality leaves it empty.

    The GUI calls this as the user types, so the dialog and the service agree on every rule.
    """
    pending = not can_assess and not raw_text(raw.relationship)
    result = validate_adverse_event(replace(raw, relationship=_PENDING) if pending else raw,
                                    context)
    if pending and result.value is not None:
        return AeCheck(replace(result.value, relationship=""), result.errors, result.flags)
    return result


def term_label(term: str, verbatim: str) -> str:
    if term == OTHER:
        return verbatim or AE_TERMS[OTHER]
    return AE_TERMS.get(term, term)


def ae_input(row: AeRow) -> AeInput:
    """A saved event as the dialog's raw input (to edit it)."""
    return AeInput(term=row.term, verbatim=row.verbatim, location=row.location,
                   start_date=row.start_date.isoformat(),
                   start_time=row.start_time.strftime("%H:%M") if row.start_time else "",
                   end_date=row.end_date.isoformat() if row.end_date else "",
                   ongoing=row.ongoing, severity=row.severity, grade=str(row.grade),
                   serious="Y" if row.serious else "N", criteria=row.criteria,
                   relationship=row.relationship or "", action=row.action, outcome=row.outcome,
                   treatment=row.treatment)


# --- helpers ------------------------------------------------------------------------------
def _subject(s: Session, ctx: UserContext, subject_id: int) -> Subject:
    subj = s.get(Subject, subject_id)
    if subj is None or subj.study_id != ctx.study.study_id:
        raise NotFound(f"subject {subject_id} does not exist in this study")
    return subj


def _event(s: Session, ctx: UserContext, ae_id: int) -> tuple[AdverseEvent, Subject]:
    ae = s.get(AdverseEvent, ae_id)
    subj = s.get(Subject, ae.subject_id) if ae is not None else None
    if ae is None or subj is None or subj.study_id != ctx.study.study_id:
        raise NotFound(f"adverse event {ae_id} does not exist in this study")
    return ae, subj


def _context(s: Session, ctx: UserContext, subj: Subject, status: str | None = None) -> AeContext:
    last_dose = s.execute(select(func.max(DosingRecord.dose_date)).where(
        DosingRecord.subject_id == subj.id, DosingRecord.missed.is_(False))).scalar()
    return AeContext(subj.consent_date, last_dose, status or subj.status, ctx.today())


def _criteria(ae: AdverseEvent) -> tuple[str, ...]:
    return tuple(code for code, col in CRITERIA_COLUMNS.items() if getattr(ae, col))


def _stored(ae: AdverseEvent) -> dict[str, object]:
    out: dict[str, object] = {f: getattr(ae, f) for f in _FIELDS if f != "criteria"}
    out["criteria"] = ",".join(_criteria(ae)) or None
    return out


def _wanted(value) -> dict[str, object]:
    out: dict[str, object] = {f: getattr(value, f) for f in _FIELDS if f != "criteria"}
    out["criteria"] = ",".join(value.criteria) or None
    out["relationship"] = value.relationship or None
    return out


def _apply(ae: AdverseEvent, value, flags: list[FieldError]) -> None:
    for f in _FIELDS:
        if f not in ("criteria", "relationship"):
            setattr(ae, f, getattr(value, f))
    ae.relationship = value.relationship or None
    for code, col in CRITERIA_COLUMNS.items():
        setattr(ae, col, code in value.criteria)
    ae.flags = ",".join(f.rule for f in flags)
    ae.flag_text = "\n".join(f.message for f in flags)


def _guard_causality(ctx: UserContext, new: str | None, old: str | None) -> None:
    if (new or None) != (old or None):
        ctx.require(Action.ASSESS_CAUSALITY)


def _new_relationship(raw: AeInput) -> str | None:
    return raw_text(raw.relationship).upper() or None


def _label(subj: Subject, ae: AdverseEvent) -> str:
    return ae_address(subj.screening_number, ae.sequence)


# --- actions ------------------------------------------------------------------------------
def ae_form_context(ctx: UserContext, subject_id: int) -> AeFormContext:
    """The subject facts the AE rules need, and what this user may change."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        subj = _subject(s, ctx, subject_id)
        ctx.require(Action.VIEW, subj.site.code)
        return AeFormContext(subj.id, subj.screening_number, subj.status,
                             _context(s, ctx, subj), allowed(ctx.user.role, Action.EDIT_DATA),
                             allowed(ctx.user.role, Action.ASSESS_CAUSALITY))


@write_action("record_adverse_event", Action.EDIT_DATA)
def record_adverse_event(ctx: UserContext, subject_id: int, raw: AeInput) -> int:
    """Record a new adverse event; returns its id.

    Refused (ValidationFailed, nothing written) when a rule is broken; late onset and a
    withdrawn subject are saved and flagged. A serious event starts the 24-hour SAE clock.
    """
    with write(ctx, "record_adverse_event") as w:
        s = w.session
        subj = _subject(s, ctx, subject_id)
        w.authorise_subject(subj)
        _guard_causality(ctx, _new_relationship(raw), None)
        can_assess = allowed(ctx.user.role, Action.ASSESS_CAUSALITY)
        result = check_ae(raw, _context(s, ctx, subj), can_assess)
        if result.value is None:
            raise ValidationFailed(result.errors)
        now = ctx.now()
        seq = (s.execute(select(func.max(AdverseEvent.sequence)).where(
            AdverseEvent.subject_id == subj.id)).scalar() or 0) + 1
        ae = AdverseEvent(subject_id=subj.id, sequence=seq, created_at=now,
                          created_by=ctx.user.username, updated_at=now,
                          updated_by=ctx.user.username)
        _apply(ae, result.value, result.flags)
        if ae.serious:
            ae.sae_recorded_at = now
        s.add(ae)
        s.flush()
        changes: dict[str, tuple[object, object]] = {  # empty fields are not audited
            f: (None, None if v == "" else v) for f, v in _wanted(result.value).items()}
        changes["flags"] = (None, ae.flags or None)
        changes["sae_recorded_at"] = (None, ae.sae_recorded_at)
        w.changed(Content.ADVERSE_EVENT, subj.id)
        w.audit.record_fields(
            "create", "adverse_event", _label(subj, ae), changes, subject_id=subj.id)
        return ae.id


@write_action("update_adverse_event", Action.EDIT_DATA)
def update_adverse_event(ctx: UserContext, ae_id: int, raw: AeInput, reason: str = "",
                         expected_version: int | None = None) -> AeSaved:
    """Correct an adverse event (or, as investigator, assess its causality).

    Changing a saved value needs a reason for change; a stale copy (someone saved since
    `expected_version` was read) is refused. Only an investigator may set or change causality.
    """
    reason = reason.strip()
    with write(ctx, "update_adverse_event") as w:
        s = w.session
        ae, subj = _event(s, ctx, ae_id)
        w.authorise_subject(subj)
        if expected_version is not None and expected_version != ae.row_version:
            at = ae.updated_at.astimezone().strftime("%Y-%m-%d %H:%M") if ae.updated_at else "?"
            raise StaleData(f"This adverse event was changed by {ae.updated_by} at {at} since "
                            "you opened it — reload it; your entries were not saved")
        _guard_causality(ctx, _new_relationship(raw), ae.relationship)
        # The withdrawn-subject flag says the event was *recorded* after withdrawal; a later
        # correction keeps what was true when it was recorded.
        old_flags = set(filter(None, ae.flags.split(",")))
        status = subj.status
        if status == SubjectStatus.WITHDRAWN and "subject_withdrawn" not in old_flags:
            status = SubjectStatus.ON_STUDY
        result = check_ae(raw, _context(s, ctx, subj, status),
                          allowed(ctx.user.role, Action.ASSESS_CAUSALITY))
        if result.value is None:
            raise ValidationFailed(result.errors)
        old, new = _stored(ae), _wanted(result.value)
        changed = [f for f in _FIELDS if _differs(old[f], new[f])]
        if any(old[f] not in (None, "") for f in changed) and not reason:
            raise ReasonRequired()
        flags = ",".join(f.rule for f in result.flags)
        if not changed and flags == ae.flags:
            return AeSaved(ae.id, ae.row_version, [], result.flags)
        now = ctx.now()
        changes = {f: (old[f], new[f]) for f in changed}
        changes["flags"] = (ae.flags or None, flags or None)
        recorded = ae.sae_recorded_at
        if result.value.serious and recorded is None:
            recorded = now
        changes["sae_recorded_at"] = (ae.sae_recorded_at, recorded)
        if changed:
            w.changed(Content.ADVERSE_EVENT, subj.id)
        w.audit.record_fields(
            "update", "adverse_event", _label(subj, ae), changes, reason=reason,
            subject_id=subj.id)
        _apply(ae, result.value, result.flags)
        ae.sae_recorded_at = recorded
        ae.updated_at, ae.updated_by = now, ctx.user.username
        s.flush()
        return AeSaved(ae.id, ae.row_version, changed, result.flags)


def _differs(a: object, b: object) -> bool:
    return (None if a == "" else a) != (None if b == "" else b)


@write_action("mark_sae_reported", Action.EDIT_DATA)
def mark_sae_reported(ctx: UserContext, ae_id: int, reported_at: datetime,
                      reason: str = "") -> AeRow:
    """Record when the SAE report reached the sponsor; this stops the SAE clock.

    Correcting a recorded report time needs a reason for change.
    """
    reason = reason.strip()
    if reported_at.tzinfo is None or reported_at.utcoffset() is None:
        raise ValueError("reported_at must be a timezone-aware datetime")
    with write(ctx, "mark_sae_reported") as w:
        s = w.session
        ae, subj = _event(s, ctx, ae_id)
        w.authorise_subject(subj)
        errs = []
        if not ae.serious:
            errs.append(FieldError("reported_at", "not_serious",
                                   "Only a serious adverse event is reported to the sponsor"))
        if reported_at > ctx.now():
            errs.append(FieldError("reported_at", "not_future",
                                   "The report time must not be in the future"))
        if reported_at.astimezone().date() < ae.start_date:
            errs.append(FieldError("reported_at", "before_start",
                                   f"The report time must not be before the event started "
                                   f"({ae.start_date.isoformat()})"))
        if ae.sae_reported_at is not None and ae.sae_reported_at != reported_at and not reason:
            errs.append(FieldError("reason", "reason_for_change",
                                   "A reason for change is required to change the recorded "
                                   "report time"))
        if errs:
            raise ValidationFailed(errs)
        if ae.sae_reported_at != reported_at:
            w.changed(Content.ADVERSE_EVENT, subj.id)
            w.audit.record_fields(
                "update", "adverse_event", _label(subj, ae),
                {"sae_reported_at": (ae.sae_reported_at, reported_at)}, reason=reason,
                subject_id=subj.id)
            ae.sae_reported_at = reported_at
            ae.updated_at, ae.updated_by = ctx.now(), ctx.user.username
        s.flush()
        return _row(ae, subj.screening_number, subj.site.code, ctx.now())


# --- reading ------------------------------------------------------------------------------
def _row(ae: AdverseEvent, screening_number: str, site: str, now: datetime) -> AeRow:
    deadline = state = None
    label = ""
    if ae.serious and ae.sae_recorded_at is not None:
        deadline = sae_deadline(ae.sae_recorded_at)
        clock = sae_clock_state(deadline, ae.sae_reported_at, now)
        state, label = clock.state, clock.label
    return AeRow(ae.id, ae.subject_id, screening_number, site, ae.sequence, ae.term,
                 term_label(ae.term, ae.verbatim), ae.verbatim, ae.location, ae.start_date,
                 ae.start_time, ae.end_date, ae.ongoing, ae.severity, ae.grade, ae.serious,
                 _criteria(ae), ae.relationship, ae.action, ae.outcome, ae.treatment,
                 tuple(filter(None, ae.flags.split(","))),
                 tuple(filter(None, ae.flag_text.split("\n"))), ae.sae_recorded_at,
                 ae.sae_reported_at, deadline, state.value if state else "", label,
                 ae.row_version, ae.updated_by or ae.created_by, ae.updated_at)


def query_ae_rows(s: Session, study_id: int, now: datetime, *, subject_id: int | None = None,
                  site: str | None = None, serious_only: bool = False) -> list[AeRow]:
    """AE rows of the study (one subject, one site, or only SAEs), by subject and sequence."""
    q = (select(AdverseEvent, Subject.screening_number, Site.code)
         .join(Subject, AdverseEvent.subject_id == Subject.id)
         .join(Site, Subject.site_id == Site.id)
         .where(Subject.study_id == study_id)
         .order_by(Subject.screening_number, AdverseEvent.sequence))
    if subject_id is not None:
        q = q.where(AdverseEvent.subject_id == subject_id)
    if site:
        q = q.where(Site.code == site)
    if serious_only:
        q = q.where(AdverseEvent.serious.is_(True))
    return [_row(ae, sn, code, now) for ae, sn, code in s.execute(q).all()]


def list_adverse_events(ctx: UserContext, subject_id: int) -> list[AeRow]:
    """A subject's adverse events in the order recorded, with the SAE clock of each."""
    ctx.require(Action.VIEW)
    with ctx.study.db.reading() as s:
        subj = _subject(s, ctx, subject_id)
        ctx.require(Action.VIEW, subj.site.code)
        return query_ae_rows(s, ctx.study.study_id, ctx.now(), subject_id=subj.id)


def open_sae_alerts(ctx: UserContext, subject_id: int | None = None) -> list[SaeAlert]:
    """SAEs whose report is outstanding (the user's site, or one subject), soonest first."""
    ctx.require(Action.VIEW)
    now = ctx.now()
    with ctx.study.db.reading() as s:
        rows = query_ae_rows(s, ctx.study.study_id, now, subject_id=subject_id,
                             site=ctx.user.site_code, serious_only=True)
    alerts = [SaeAlert(r.id, r.subject_id, r.screening_number, r.site, r.term_label, r.grade,
                       r.sae_deadline, r.sae_state == SaeState.OVERDUE.value, r.sae_label)
              for r in rows if r.report_due is not None and r.sae_deadline is not None]
    return sorted(alerts, key=lambda a: a.deadline)
