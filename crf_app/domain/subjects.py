"""Subject enrolment rules and the visit schedule (pure, no database)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from crf_app.domain.errors import FieldError
from crf_app.domain.protocol import Protocol, study_day_date

SCREENING_NUMBER = re.compile(r"^[A-Z0-9][A-Z0-9-]{2,19}$")
INITIALS = re.compile(r"^[A-Z][A-Z-]{1,2}$")
SEXES = {"F": "Female", "M": "Male"}


class SubjectStatus:
    SCREENING = "screening"
    ON_STUDY = "on_study"
    SCREEN_FAILED = "screen_failed"
    WITHDRAWN = "withdrawn"
    COMPLETED = "completed"

    LABELS = {
        "screening": "Screening",
        "on_study": "On study",
        "screen_failed": "Screen failure",
        "withdrawn": "Withdrawn",
        "completed": "Completed",
    }
    ACTIVE = frozenset({"screening", "on_study"})


@dataclass(frozen=True)
class Enrollment:
    """What the coordinator enters to enrol a subject (no names: screening number, initials)."""

    screening_number: str
    site: str
    initials: str
    birth_year: int | None
    sex: str
    arm: str
    consent_date: date | None
    enrolled_on: date | None
    baseline_date: date | None = None


def check_enrollment(e: Enrollment, protocol: Protocol, today: date) -> list[FieldError]:
    """Every rule an enrolment breaks, one FieldError per field."""
    errs: list[FieldError] = []
    if not SCREENING_NUMBER.match(e.screening_number or ""):
        errs.append(FieldError("screening_number", "format",
                               "Screening number must be 3–20 capital letters, digits or "
                               "hyphens, e.g. S01-001"))
    if e.site not in {s.code for s in protocol.sites}:
        errs.append(FieldError("site", "codelist", f"Site {e.site!r} is not a site of this study"))
    if not INITIALS.match(e.initials or ""):
        errs.append(FieldError("initials", "format",
                               "Initials must be 2–3 capital letters ('-' for a missing middle "
                               "initial), never a name"))
    if e.birth_year is None:
        errs.append(FieldError("birth_year", "required", "Year of birth is required"))
    elif not (1900 <= e.birth_year <= today.year - 18):
        errs.append(FieldError("birth_year", "range",
                               f"Year of birth must be between 1900 and {today.year - 18} "
                               "(adults only)"))
    if e.sex not in SEXES:
        errs.append(FieldError("sex", "codelist", "Sex must be F (female) or M (male)"))
    if e.arm not in {a.code for a in protocol.arms}:
        errs.append(FieldError("arm", "codelist", f"Arm {e.arm!r} is not an arm of this study"))
    if e.enrolled_on is None:
        errs.append(FieldError("enrolled_on", "required", "Enrolment date is required"))
    elif e.enrolled_on > today:
        errs.append(FieldError("enrolled_on", "not_future",
                               "Enrolment date must not be in the future"))
    if e.consent_date is None:
        errs.append(FieldError("consent_date", "required", "Informed-consent date is required"))
    else:
        if e.consent_date > today:
            errs.append(FieldError("consent_date", "not_future",
                                   "Informed-consent date must not be in the future"))
        elif e.enrolled_on is not None and e.consent_date > e.enrolled_on:
            errs.append(FieldError("consent_date", "consent_before_enrolment",
                                   "Informed consent must be given on or before the enrolment "
                                   f"date ({e.enrolled_on.isoformat()})"))
    if e.baseline_date is not None:
        errs.extend(check_baseline(e.baseline_date, e.consent_date, today))
    return errs


def check_baseline(baseline: date, consent: date | None, today: date) -> list[FieldError]:
    errs = []
    if baseline > today:
        errs.append(FieldError("baseline_date", "not_future",
                               "Baseline date must not be in the future"))
    if consent is not None and baseline < consent:
        errs.append(FieldError("baseline_date", "after_consent",
                               f"Baseline date must not be before informed consent "
                               f"({consent.isoformat()})"))
    return errs


@dataclass(frozen=True)
class PlannedVisit:
    code: str
    name: str
    sequence: int
    day: int
    planned: date | None
    window_start: date | None
    window_end: date | None


def schedule(protocol: Protocol, baseline: date | None) -> list[PlannedVisit]:
    """The visits of the protocol with their dates when day 1 is `baseline` (None: undated)."""
    out = []
    for seq, v in enumerate(protocol.visits, start=1):
        if baseline is None:
            out.append(PlannedVisit(v.code, v.name, seq, v.day, None, None, None))
        else:
            out.append(PlannedVisit(v.code, v.name, seq, v.day,
                                    study_day_date(baseline, v.day),
                                    study_day_date(baseline, v.first_day),
                                    study_day_date(baseline, v.last_day)))
    return out


def window_deviation(actual: date, start: date | None, end: date | None) -> str:
    """'' when within the window (or no window yet), else a protocol-deviation description."""
    if start is not None and actual < start:
        n = (start - actual).days
        return f"Visit {n} day{'s' if n != 1 else ''} early (window {start} to {end})"
    if end is not None and actual > end:
        n = (actual - end).days
        return f"Visit {n} day{'s' if n != 1 else ''} late (window {start} to {end})"
    return ""


def visit_display_status(status: str, window_end: date | None, today: date) -> str:
    """Stored status plus 'overdue' for a planned visit whose window has passed."""
    if status == "planned" and window_end is not None and window_end < today:
        return "overdue"
    if status == "planned" and window_end is None:
        return "not scheduled"
    return status
