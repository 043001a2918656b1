"""Enrolling subjects, scheduling and recording visits, ending participation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import String, case, func, select, type_coerce
from sqlalchemy.orm import Session

from crf_app.domain.addresses import visit_address
from crf_app.domain.coverage import Content
from crf_app.domain.errors import FieldError, NotFound, ValidationFailed
from crf_app.domain.roles import Action
from crf_app.domain.subjects import (
    Enrollment,
    SubjectStatus,
    check_baseline,
    check_enrollment,
    schedule,
    visit_display_status,
    window_deviation,
)
from crf_app.services.context import UserContext
from crf_app.services.forms import eligibility_verdict
from crf_app.services.pipeline import write, write_action
from crf_app.storage.models import Site, Subject, Visit


@dataclass(frozen=True)
class SubjectRow:
    """One line of the subject list."""

    id: int
    screening_number: str
    initials: str
    site: str
    arm: str
    sex: str
    birth_year: int
    status: str
    baseline_date: date | None
    next_visit: str
    next_visit_date: date | None


@dataclass(frozen=True)
class VisitRow:
    id: int
    code: str
    name: str
    day: int
    planned_date: date | None
    window_start: date | None
    window_end: date | None
    actual_date: date | None
    status: str
    deviation: str


@dataclass(frozen=True)
class SubjectDetail:
    id: int
    screening_number: str
    initials: str
    site: str
    site_name: str
    arm: str
    arm_name: str
    sex: str
    birth_year: int
    consent_date: date
    enrolled_on: date
    baseline_date: date | None
    status: str
    status_reason: str
    status_date: date | None
    visits: list[VisitRow]


def _subject(s: Session, ctx: UserContext, subject_id: int) -> Subject:
    subj = s.get(Subject, subject_id)
    if subj is None or subj.study_id != ctx.study.study_id:
        raise NotFound(f"subject {subject_id} does not exist in this study")
    return subj


@write_action("enroll_subject", Action.ENROLL)
def enroll_subject(ctx: UserContext, e: Enrollment) -> int:
    """Enrol a subject (and schedule the visits when a baseline date is given); returns its id.
    Refused at a site the caller does not work at, and at a locked site."""
    ctx.require(Action.ENROLL, e.site)
    protocol = ctx.study.protocol
    errors = check_enrollment(e, protocol, ctx.today())
    if errors:
        raise ValidationFailed(errors)
    with write(ctx, "enroll_subject") as w:
        s = w.session
        taken = s.execute(select(Subject.id).where(
            Subject.study_id == ctx.study.study_id,
            Subject.screening_number == e.screening_number)).first()
        if taken:
            raise ValidationFailed(FieldError(
                "screening_number", "unique",
                f"Screening number {e.screening_number} is already used in this study"))
        site_id = s.execute(select(Site.id).where(Site.study_id == ctx.study.study_id,
                                                  Site.code == e.site)).scalar_one()
        w.authorise(e.site, site_id=site_id)
        subj = Subject(study_id=ctx.study.study_id, site_id=site_id,
                       screening_number=e.screening_number, initials=e.initials,
                       birth_year=e.birth_year, sex=e.sex, arm=e.arm,
                       consent_date=e.consent_date, enrolled_on=e.enrolled_on,
                       baseline_date=e.baseline_date,
                       status=SubjectStatus.ON_STUDY if e.baseline_date
                       else SubjectStatus.SCREENING,
                       metadata_version=ctx.study.metadata_version)
        s.add(subj)
        s.flush()
        w.changed(Content.SUBJECT, subj.id)
        w.audit.record_fields("create", "subject", subj.screening_number, {
            "site": (None, e.site), "initials": (None, e.initials),
            "birth_year": (None, e.birth_year), "sex": (None, e.sex), "arm": (None, e.arm),
            "consent_date": (None, e.consent_date), "enrolled_on": (None, e.enrolled_on),
            "baseline_date": (None, e.baseline_date), "status": (None, subj.status),
        }, subject_id=subj.id)
        for pv in schedule(protocol, e.baseline_date):
            s.add(Visit(subject=subj, visit_code=pv.code, sequence=pv.sequence,
                        planned_date=pv.planned, window_start=pv.window_start,
                        window_end=pv.window_end, status="planned", deviation=""))
        return subj.id


@write_action("set_baseline", Action.EDIT_DATA)
def set_baseline(ctx: UserContext, subject_id: int, baseline: date, reason: str = "") -> None:
    """Set (randomise) or correct the baseline date; the schedule is recomputed from it."""
    with write(ctx, "set_baseline") as w:
        s = w.session
        subj = _subject(s, ctx, subject_id)
        w.authorise_subject(subj)
        errs = check_baseline(baseline, subj.consent_date, ctx.today())
        if subj.status not in SubjectStatus.ACTIVE:
            errs.append(FieldError("baseline_date", "subject_active",
                                   f"Subject is {SubjectStatus.LABELS[subj.status].lower()}; "
                                   "its baseline can no longer change"))
        if eligibility_verdict(s, ctx, subj.id) == "N":
            errs.append(FieldError("baseline_date", "eligible",
                                   "The subject did not meet the eligibility criteria and "
                                   "cannot be randomised"))
        if subj.baseline_date is not None and subj.baseline_date != baseline and not reason.strip():
            errs.append(FieldError("reason", "reason_for_change",
                                   "A reason for change is required to change the baseline date"))
        if errs:
            raise ValidationFailed(errs)
        audit = w.audit
        old_status = subj.status
        if subj.baseline_date != baseline or old_status != SubjectStatus.ON_STUDY:
            w.changed(Content.SUBJECT, subj.id)
        audit.record_fields("update", "subject", subj.screening_number, {
            "baseline_date": (subj.baseline_date, baseline),
            "status": (old_status, SubjectStatus.ON_STUDY),
        }, reason=reason.strip(), subject_id=subj.id)
        subj.baseline_date = baseline
        subj.status = SubjectStatus.ON_STUDY
        planned = {pv.code: pv for pv in schedule(ctx.study.protocol, baseline)}
        for visit in subj.visits:
            pv = planned[visit.visit_code]
            deviation = (window_deviation(visit.actual_date, pv.window_start, pv.window_end)
                         if visit.actual_date else "")
            audit.record_fields("update", "visit",
                                visit_address(subj.screening_number, visit.visit_code),
                                {"planned_date": (visit.planned_date, pv.planned),
                                 "deviation": (visit.deviation, deviation)},
                                reason="schedule computed from baseline date",
                                subject_id=subj.id)
            visit.planned_date, visit.window_start, visit.window_end = (
                pv.planned, pv.window_start, pv.window_end)
            visit.deviation = deviation


@write_action("record_visit_date", Action.EDIT_DATA)
def record_visit_date(ctx: UserContext, visit_id: int, actual: date, reason: str = "") -> str:
    """Record when a visit took place; returns the protocol deviation ('' when in window).

    A date outside the visit window is accepted and flagged as a deviation. Changing an already
    recorded date needs a reason for change.
    """
    with write(ctx, "record_visit_date") as w:
        s = w.session
        visit = s.get(Visit, visit_id)
        if visit is None or visit.subject.study_id != ctx.study.study_id:
            raise NotFound(f"visit {visit_id} does not exist")
        subj = visit.subject
        w.authorise_subject(subj)
        errs = []
        if actual > ctx.today():
            errs.append(FieldError("actual_date", "not_future",
                                   "Visit date must not be in the future"))
        if actual < subj.consent_date:
            errs.append(FieldError("actual_date", "after_consent",
                                   f"Visit date must not be before informed consent "
                                   f"({subj.consent_date.isoformat()})"))
        if subj.status not in SubjectStatus.ACTIVE:
            errs.append(FieldError("actual_date", "subject_active",
                                   f"Subject is {SubjectStatus.LABELS[subj.status].lower()}"))
        if visit.actual_date is not None and visit.actual_date != actual and not reason.strip():
            errs.append(FieldError("reason", "reason_for_change",
                                   "A reason for change is required to change a recorded "
                                   "visit date"))
        if errs:
            raise ValidationFailed(errs)
        deviation = window_deviation(actual, visit.window_start, visit.window_end)
        if visit.actual_date != actual:
            w.changed(Content.VISIT_DATE, subj.id, visit_id=visit.id)
        w.audit.record_fields(
            "update", "visit", visit_address(subj.screening_number, visit.visit_code), {
                "actual_date": (visit.actual_date, actual),
                "status": (visit.status, "done"),
                "deviation": (visit.deviation, deviation),
            }, reason=reason.strip(), subject_id=subj.id)
        visit.actual_date, visit.status, visit.deviation = actual, "done", deviation
        return deviation


@write_action("end_participation", Action.CHANGE_STATUS)
def end_participation(ctx: UserContext, subject_id: int, status: str, on: date,
                      reason: str) -> None:
    """Withdraw, complete or screen-fail a subject, with the date and reason."""
    allowed_from = {
        SubjectStatus.WITHDRAWN: SubjectStatus.ACTIVE,
        SubjectStatus.COMPLETED: frozenset({SubjectStatus.ON_STUDY}),
        SubjectStatus.SCREEN_FAILED: frozenset({SubjectStatus.SCREENING}),
    }
    with write(ctx, "end_participation") as w:
        s = w.session
        subj = _subject(s, ctx, subject_id)
        w.authorise_subject(subj)
        errs = []
        if status not in allowed_from:
            errs.append(FieldError("status", "codelist",
                                   "Status must be withdrawn, completed or screen_failed"))
        elif subj.status not in allowed_from[status]:
            errs.append(FieldError("status", "transition",
                                   f"A subject who is "
                                   f"{SubjectStatus.LABELS[subj.status].lower()} cannot become "
                                   f"{SubjectStatus.LABELS[status].lower()}"))
        if not reason.strip():
            errs.append(FieldError("reason", "required", "A reason is required"))
        if on > ctx.today():
            errs.append(FieldError("date", "not_future", "The date must not be in the future"))
        if on < subj.consent_date:
            errs.append(FieldError("date", "after_consent",
                                   "The date must not be before informed consent"))
        if errs:
            raise ValidationFailed(errs)
        w.changed(Content.SUBJECT, subj.id)
        w.audit.record_fields(
            "update", "subject", subj.screening_number, {
                "status": (subj.status, status), "status_date": (subj.status_date, on),
                "status_reason": (subj.status_reason or None, reason.strip()),
            }, reason=reason.strip(), subject_id=subj.id)
        subj.status, subj.status_date, subj.status_reason = status, on, reason.strip()


def list_subjects(ctx: UserContext) -> list[SubjectRow]:
    """Every subject the user may see, with the next planned visit.

    One query, fast on a large study: the next visit (the earliest planned visit with a date)
    is looked up only for the subjects still on study (most of a large study's subjects have
    ended), by a correlated subquery on the visit index instead of an aggregate over every
    visit; the dates come back as stored and are parsed with date.fromisoformat (SQLAlchemy's
    per-value date parsing cost more than the query itself on 10,000 subjects)."""
    ctx.require(Action.VIEW)
    names = {v.code: v.name for v in ctx.study.protocol.visits}
    active = Subject.status.in_(sorted(SubjectStatus.ACTIVE))
    planned = ((Visit.subject_id == Subject.id) & (Visit.status == "planned")
               & Visit.planned_date.is_not(None))
    due = (select(func.min(type_coerce(Visit.planned_date, String))).where(planned)
           .correlate(Subject).scalar_subquery())
    code = (select(Visit.visit_code).where(planned).order_by(Visit.planned_date, Visit.sequence)
            .limit(1).correlate(Subject).scalar_subquery())
    q = (select(Subject.id, Subject.screening_number, Subject.initials, Site.code,
                Subject.arm, Subject.sex, Subject.birth_year, Subject.status,
                type_coerce(Subject.baseline_date, String),
                case((active, due), else_=None), case((active, code), else_=None))
         .join(Site, Subject.site_id == Site.id)
         .where(Subject.study_id == ctx.study.study_id)
         .order_by(Subject.screening_number))
    if ctx.user.site_code:
        q = q.where(Site.code == ctx.user.site_code)
    with ctx.study.db.reading() as s:
        rows = s.connection().execute(q).all()
    one = {}.setdefault  # one string object per site, arm and status, not one per subject
    return [SubjectRow(r[0], r[1], r[2], one(r[3], r[3]), one(r[4], r[4]), r[5], r[6],
                       one(r[7], r[7]), _day(r[8]), names.get(r[10], "") if r[10] else "",
                       _day(r[9])) for r in rows]


def _day(value: date | str | None) -> date | None:
    """A date column read as stored: ISO text on SQLite, a date on PostgreSQL."""
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(value)


def subject_detail(ctx: UserContext, subject_id: int) -> SubjectDetail:
    ctx.require(Action.VIEW)
    protocol = ctx.study.protocol
    today = ctx.today()
    with ctx.study.db.reading() as s:
        subj = _subject(s, ctx, subject_id)
        if ctx.user.site_code not in (None, subj.site.code):
            ctx.require(Action.VIEW, subj.site.code)
        visits = [VisitRow(v.id, v.visit_code, protocol.visit(v.visit_code).name,
                           protocol.visit(v.visit_code).day, v.planned_date, v.window_start,
                           v.window_end, v.actual_date,
                           visit_display_status(v.status, v.window_end, today)
                           if subj.status in SubjectStatus.ACTIVE or v.status != "planned"
                           else "not done",
                           v.deviation) for v in subj.visits]
        try:
            arm_name = protocol.arm(subj.arm).name
        except KeyError:
            arm_name = subj.arm
        return SubjectDetail(subj.id, subj.screening_number, subj.initials, subj.site.code,
                             subj.site.name, subj.arm, arm_name, subj.sex, subj.birth_year,
                             subj.consent_date, subj.enrolled_on, subj.baseline_date,
                             subj.status, subj.status_reason, subj.status_date, visits)
