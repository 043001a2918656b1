"""Reports over the two logs: AEs by term × grade, the SAE list, dosing compliance, and the
data of one subject's course timeline.

Each study report is plain rows (for the GUI or a test) plus a text and a CSV renderer;
`report_main` is what `crf-app report …` prints. Reports read and change nothing.
"""

from __future__ import annotations

import csv as csvlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select

from crf_app.domain.adverse_events import (
    AE_OUTCOMES,
    AE_RELATIONSHIPS,
    SERIOUSNESS_CRITERIA,
    AeTableRow,
    ae_table,
    ae_table_csv,
    ae_table_text,
)
from crf_app.domain.compliance import course_spans
from crf_app.domain.errors import FieldError, ValidationFailed
from crf_app.domain.subjects import SubjectStatus
from crf_app.services.adverse_events import list_adverse_events, query_ae_rows
from crf_app.services.context import StudyHandle, UserContext
from crf_app.services.dosing import (
    compliance_as_of,
    compliance_of,
    dosing_records,
    subject_regimen,
    to_record,
)
from crf_app.storage.log_models import AdverseEvent, DosingRecord
from crf_app.storage.models import Site, Subject

REPORT_KINDS = ("ae", "sae", "compliance")


def _check_site(study: StudyHandle, site: str | None) -> None:
    if site and site not in {s.code for s in study.protocol.sites}:
        raise ValidationFailed(FieldError(
            "site", "codelist", f"Site {site!r} is not a site of this study (sites: "
                                f"{', '.join(s.code for s in study.protocol.sites)})"))


def ae_events(study: StudyHandle, site: str | None = None) -> list[tuple[str, str, int, bool]]:
    """Every adverse event of the study (or one site) as (site, term, grade, serious)."""
    _check_site(study, site)
    q = (select(Site.code, AdverseEvent.term, AdverseEvent.grade, AdverseEvent.serious)
         .join(Subject, AdverseEvent.subject_id == Subject.id)
         .join(Site, Subject.site_id == Site.id)
         .where(Subject.study_id == study.study_id))
    if site:
        q = q.where(Site.code == site)
    with study.db.reading() as s:
        return [(r[0], r[1], r[2], bool(r[3])) for r in s.execute(q).all()]


def ae_table_rows(study: StudyHandle, site: str | None = None,
                  by_site: bool = False) -> list[AeTableRow]:
    """Events counted by term × CTCAE grade (see `domain.adverse_events.ae_table`)."""
    return ae_table(ae_events(study, site), by_site)


@dataclass(frozen=True)
class SaeListRow:
    subject: str
    site: str
    sequence: int
    term: str
    grade: int
    start_date: date
    criteria: str
    relationship: str
    outcome: str
    recorded_at: datetime | None
    deadline: datetime | None
    reported_at: datetime | None
    clock: str


def sae_list(study: StudyHandle, site: str | None = None,
             now: datetime | None = None) -> list[SaeListRow]:
    """Every serious adverse event with its reporting clock, by subject."""
    _check_site(study, site)
    now = now or datetime.now(UTC)
    with study.db.reading() as s:
        rows = query_ae_rows(s, study.study_id, now, site=site, serious_only=True)
    return [SaeListRow(r.screening_number, r.site, r.sequence, r.term_label, r.grade,
                       r.start_date, ", ".join(SERIOUSNESS_CRITERIA[c] for c in r.criteria),
                       AE_RELATIONSHIPS.get(r.relationship or "", "awaiting assessment"),
                       AE_OUTCOMES.get(r.outcome, r.outcome), r.sae_recorded_at,
                       r.sae_deadline, r.sae_reported_at, r.sae_label) for r in rows]


@dataclass(frozen=True)
class ComplianceRow:
    subject: str
    site: str
    arm: str
    status: str
    courses: int
    planned: int
    given: int
    percent: float | None


def compliance_rows(study: StudyHandle, site: str | None = None,
                    today: date | None = None) -> list[ComplianceRow]:
    """Dosing compliance of every randomised subject (or one site's), as of `today`."""
    _check_site(study, site)
    today = today or date.today()
    protocol = study.protocol
    q = (select(Subject.id, Subject.screening_number, Site.code, Subject.arm, Subject.status,
                Subject.baseline_date, Subject.status_date)
         .join(Site, Subject.site_id == Site.id)
         .where(Subject.study_id == study.study_id, Subject.baseline_date.is_not(None))
         .order_by(Subject.screening_number))
    if site:
        q = q.where(Site.code == site)
    with study.db.reading() as s:
        subjects = s.execute(q).all()
        records: dict[int, list] = {}
        dq = select(DosingRecord).join(Subject, DosingRecord.subject_id == Subject.id).where(
            Subject.study_id == study.study_id).order_by(DosingRecord.id)
        for r in s.execute(dq).scalars():
            records.setdefault(r.subject_id, []).append(to_record(r))
    out = []
    for sid, sn, code, arm, status, baseline, status_date in subjects:
        regimen = protocol.regimen(protocol.arm(arm).regimen)
        c = compliance_of(records.get(sid, []), regimen, baseline,
                          compliance_as_of(status, status_date, today))
        out.append(ComplianceRow(sn, code, arm, SubjectStatus.LABELS.get(status, status),
                                 len(c.courses), c.planned, c.given, c.percent))
    return out


# --- renderers ----------------------------------------------------------------------------
def _csv(rows: Iterable[Iterable[object]]) -> str:
    buf = io.StringIO()
    writer = csvlib.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def _local(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else ""


def _utc(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="minutes") if value else ""


SAE_HEADER = ("subject", "site", "ae", "term", "grade", "start_date", "criteria",
              "relationship", "outcome", "recorded_at_utc", "deadline_utc", "reported_at_utc",
              "clock")


def sae_list_csv(rows: list[SaeListRow]) -> str:
    return _csv([SAE_HEADER, *([r.subject, r.site, f"AE{r.sequence}", r.term, r.grade,
                                r.start_date.isoformat(), r.criteria, r.relationship,
                                r.outcome, _utc(r.recorded_at), _utc(r.deadline),
                                _utc(r.reported_at), r.clock] for r in rows)])


def sae_list_text(rows: list[SaeListRow]) -> str:
    if not rows:
        return "No serious adverse events."
    lines = ["Serious adverse events"]
    for r in rows:
        lines.append(f"{r.subject} AE{r.sequence} ({r.site}): {r.term}, grade {r.grade}, "
                     f"started {r.start_date.isoformat()} — {r.criteria}; {r.relationship}; "
                     f"report due {_local(r.deadline)}: {r.clock}")
    return "\n".join(lines)


COMPLIANCE_HEADER = ("subject", "site", "arm", "status", "courses", "planned_instillations",
                     "given_instillations", "compliance_percent")


def compliance_csv(rows: list[ComplianceRow]) -> str:
    return _csv([COMPLIANCE_HEADER, *([r.subject, r.site, r.arm, r.status, r.courses,
                                       r.planned, r.given,
                                       "" if r.percent is None else f"{r.percent:.1f}"]
                                      for r in rows)])


def compliance_text(rows: list[ComplianceRow]) -> str:
    if not rows:
        return "No randomised subjects."
    lines = [f"{'Subject':<12} {'Site':<5} {'Arm':<5} {'Status':<14} {'Courses':>7} "
             f"{'Planned':>8} {'Given':>6} {'Compliance':>10}"]
    for r in rows:
        pct = "—" if r.percent is None else f"{r.percent:.1f} %"
        lines.append(f"{r.subject:<12} {r.site:<5} {r.arm:<5} {r.status:<14} {r.courses:>7} "
                     f"{r.planned:>8} {r.given:>6} {pct:>10}")
    planned = sum(r.planned for r in rows)
    given = sum(r.given for r in rows)
    if planned:
        lines.append(f"All subjects: {given} of {planned} planned instillations "
                     f"({100 * given / planned:.1f} %)")
    return "\n".join(lines)


def report_main(study: StudyHandle, args_kind: str, site: str | None = None,
                csv: bool = False, *, now: datetime | None = None) -> str:
    """The text `crf-app report KIND [--site S] [--csv]` prints.

    ae: the term × grade table (by site when no site is chosen) and, as text, the SAE list;
    sae: the SAE list; compliance: instillations given / planned per subject.
    """
    now = now or datetime.now(UTC)
    if args_kind == "ae":
        events = ae_events(study, site)
        by_site = site is None
        if csv:
            return _csv(ae_table_csv(events, by_site))
        head = f"Adverse events — {study.oid}" + (f", site {site}" if site else "")
        return "\n\n".join([head, ae_table_text(events, by_site),
                            sae_list_text(sae_list(study, site, now))]) + "\n"
    if args_kind == "sae":
        rows = sae_list(study, site, now)
        return sae_list_csv(rows) if csv else sae_list_text(rows) + "\n"
    if args_kind == "compliance":
        crows = compliance_rows(study, site, now.astimezone().date())
        return compliance_csv(crows) if csv else compliance_text(crows) + "\n"
    raise ValidationFailed(FieldError("report", "codelist",
                                      f"Report must be one of: {', '.join(REPORT_KINDS)}"))


# --- the course timeline's data -----------------------------------------------------------
@dataclass(frozen=True)
class TimelineDay:
    day: date
    instillations: int
    total_mg: Decimal
    missed: int
    flagged: bool  # a record of the day raised a finding


@dataclass(frozen=True)
class TimelineAe:
    label: str
    start: date
    end: date | None  # None: ongoing
    grade: int
    serious: bool
    reported: bool


@dataclass(frozen=True)
class Timeline:
    """Everything the course timeline paints, as plain data."""

    title: str
    baseline: date | None
    first: date
    last: date
    today: date
    planned_per_day: int
    max_per_day: int
    days: list[TimelineDay]
    aes: list[TimelineAe]
    courses: list[tuple[date, date]]


def subject_timeline(ctx: UserContext, subject_id: int) -> Timeline:
    """Per day: instillations, dose, missed doses; the AEs as spans; the courses."""
    aes = list_adverse_events(ctx, subject_id)  # checks the user may see the subject
    with ctx.study.db.reading() as s:
        subj = s.get(Subject, subject_id)
        assert subj is not None
        stored = dosing_records(s, subj.id)
        regimen = subject_regimen(ctx, subj)
        title = f"{subj.screening_number} — {regimen.indication}"
        baseline = subj.baseline_date
    today = ctx.today()
    by_day: dict[date, list[DosingRecord]] = {}
    for r in stored:
        by_day.setdefault(r.dose_date, []).append(r)
    days = [TimelineDay(d, sum(r.instillations for r in rs),
                        sum((to_record(r).total_mg for r in rs), Decimal(0)),
                        sum(r.missed for r in rs), any(r.findings for r in rs))
            for d, rs in sorted(by_day.items())]
    spans = [TimelineAe(a.term_label, a.start_date, a.end_date, a.grade, a.serious,
                        a.sae_state == "reported") for a in aes]
    marks = [d.day for d in days] + [a.start for a in spans] + [a.end for a in spans if a.end]
    if baseline is not None:
        marks += [baseline, baseline + timedelta(days=regimen.course_days.min - 1)]
    if any(a.end is None for a in spans):
        marks.append(today)
    first = min(marks, default=today)
    last = max(max(marks, default=today), first)
    courses = course_spans((d.day for d in days if d.instillations), regimen)
    return Timeline(title, baseline, first, last, today, regimen.instillations_per_day.min,
                    regimen.instillations_per_day.max, days, spans, courses)
