"""Dosing log (CDASH EX): codelists, the rules of one administration, quick daily entry.

Pure Python. `validate_dose` turns the raw strings of the dosing dialog into a typed `DoseRecord`
and sorts what it finds into errors (refused), findings (saved, and a query is raised: each has
its own rule name) and warnings (saved, shown to the user). Courses, washout and compliance
are defined in `compliance.py`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from crf_app.domain.adverse_events import (
    check_text,
    parse_code,
    parse_date,
    parse_time,
    raw_text,
)
from crf_app.domain.compliance import course_spans, dose_free_days
from crf_app.domain.errors import FieldError
from crf_app.domain.protocol import RegimenDef

NOSTRILS: Mapping[str, str] = MappingProxyType({
    "LEFT": "Left nostril",
    "RIGHT": "Right nostril",
    "BOTH": "Both nostrils",
    "ALTERNATING": "Alternating nostrils",
})
INTRANASAL = "INTRANASAL"
ROUTES: Mapping[str, str] = MappingProxyType({INTRANASAL: "Intranasal"})
GIVEN_BY: Mapping[str, str] = MappingProxyType({"SELF": "Self-administered",
                                                "STAFF": "Study staff"})
MAX_DECIMALS = 3
DOSE_HARD_MAX_MG = Decimal(1000)  # refused above: a typing slip, not a dose
INSTILLATIONS_HARD_MAX = 99
LOT_MAX = 40
MISSED_REASON_MAX = 200
LATE_DOSE_AFTER = dt.time(18, 0)  # the product can disturb sleep
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_DOSE_FIELDS = (("dose_mg", "Dose per instillation"), ("instillations", "Instillations"),
                ("nostril", "Nostril"), ("lot", "Lot number"), ("given_by", "Given by"))


@dataclass(frozen=True)
class DoseInput:
    """One administration as typed in the dosing dialog (all text, codes for combos)."""

    date: str = ""
    time: str = ""
    dose_mg: str = ""
    instillations: str = ""
    nostril: str = ""
    route: str = INTRANASAL
    lot: str = ""
    given_by: str = ""
    missed: bool = False
    missed_reason: str = ""


@dataclass(frozen=True, slots=True)
class DoseRecord:
    """A valid administration (or missed dose), typed, ready to store.

    A missed dose has dose_mg None, instillations 0, empty nostril, lot and given_by, route ''
    unless INTRANASAL was kept, and time None unless the planned time was entered.
    """

    date: dt.date
    time: dt.time | None
    dose_mg: Decimal | None
    instillations: int
    nostril: str
    route: str
    lot: str
    given_by: str
    missed: bool = False
    missed_reason: str = ""

    @property
    def total_mg(self) -> Decimal:
        """dose per instillation × instillations (0 for a missed dose)."""
        return self.dose_mg * self.instillations if self.dose_mg is not None else Decimal(0)


@dataclass(frozen=True)
class DoseContext:
    """What the rules need: the subject's regimen and state, and their other dosing records.

    `existing` is every other record of the subject; when editing, leave out the record being
    edited. `course_start` is the baseline (or planned course start) date, None if not set.
    """

    regimen: RegimenDef
    randomised: bool
    course_start: dt.date | None
    existing: Sequence[DoseRecord]
    today: dt.date


@dataclass(frozen=True)
class DoseCheck:
    """`value` is None when `errors` refuse the save; findings raise queries; warnings inform."""

    value: DoseRecord | None
    errors: list[FieldError] = field(default_factory=list)
    findings: list[FieldError] = field(default_factory=list)
    warnings: list[FieldError] = field(default_factory=list)


def dec(value: float) -> Decimal:
    """A protocol number as the Decimal it was written as (0.1 -> Decimal('0.1'))."""
    return Decimal(repr(value))


def parse_dose(raw: object, errors: list[FieldError]) -> Decimal | None:
    """A dose in mg: a plain positive decimal number with at most 3 decimals."""
    text = raw_text(raw)
    if not text:
        errors.append(FieldError("dose_mg", "required", "Dose per instillation is required"))
        return None
    negative = text.startswith("-") and _NUMBER.fullmatch(text[1:])
    if not negative and not _NUMBER.fullmatch(text):
        errors.append(FieldError("dose_mg", "number",
                                 "Dose per instillation must be a number of mg, e.g. 0.1 "
                                 "(a point as the decimal mark)"))
        return None
    whole, _, fraction = text.lstrip("-").partition(".")
    fraction = fraction.rstrip("0")  # 0.100 is 0.1
    if len(fraction) > MAX_DECIMALS:
        errors.append(FieldError("dose_mg", "decimals",
                                 f"Dose per instillation has at most {MAX_DECIMALS} decimals"))
        return None
    value = Decimal(f"{whole or '0'}.{fraction}" if fraction else whole or "0")
    if negative or value == 0:
        errors.append(FieldError("dose_mg", "positive",
                                 "Dose per instillation must be more than 0 mg"))
        return None
    if value > DOSE_HARD_MAX_MG:
        errors.append(FieldError("dose_mg", "hard_limit",
                                 f"Dose per instillation above {DOSE_HARD_MAX_MG} mg is not "
                                 "possible; check the unit (mg)"))
        return None
    return value


def parse_instillations(raw: object, errors: list[FieldError]) -> int | None:
    """A whole number of instillations, 1 to 99."""
    text = raw_text(raw)
    if not text:
        errors.append(FieldError("instillations", "required", "Instillations are required"))
        return None
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit():
        errors.append(FieldError("instillations", "integer",
                                 "Instillations must be a whole number, e.g. 2"))
        return None
    if text.startswith("-") or not digits.lstrip("0"):
        errors.append(FieldError("instillations", "positive",
                                 "Instillations must be at least 1"))
        return None
    if len(digits.lstrip("0")) > 2:
        errors.append(FieldError("instillations", "hard_limit",
                                 f"More than {INSTILLATIONS_HARD_MAX} instillations at once is "
                                 "not possible"))
        return None
    return int(digits)


def validate_dose(raw: DoseInput, ctx: DoseContext) -> DoseCheck:
    """Check every rule of one administration; never raises for any strings typed."""
    errors: list[FieldError] = []
    if not ctx.randomised:
        errors.append(FieldError("subject", "not_randomised",
                                 "The subject has not been randomised; no study drug can be "
                                 "recorded"))
    day = parse_date("date", raw.date, "Date", errors, required=True)
    if day is not None and day > ctx.today:
        errors.append(FieldError("date", "not_future", "Date must not be in the future"))
    missed = bool(raw.missed)
    at = parse_time("time", raw.time, "Time", errors, required=not missed)
    route = parse_code("route", raw.route, ROUTES, "Route", errors, required=not missed) or ""
    dose: Decimal | None = None
    count: int | None = 0
    nostril: str | None = ""
    lot = given_by = reason = ""
    if missed:
        reason = check_text("missed_reason", raw.missed_reason, "Reason for the missed dose",
                            errors, max_len=MISSED_REASON_MAX, required=True)
        for name, label in _DOSE_FIELDS:
            if raw_text(getattr(raw, name)):
                errors.append(FieldError(name, "missed_with_dose",
                                         f"{label} must be empty for a missed dose"))
    else:
        if raw_text(raw.missed_reason):
            errors.append(FieldError("missed_reason", "not_missed",
                                     "A reason is recorded only for a missed dose"))
        dose = parse_dose(raw.dose_mg, errors)
        count = parse_instillations(raw.instillations, errors)
        nostril = parse_code("nostril", raw.nostril, NOSTRILS, "Nostril", errors)
        lot = check_text("lot", raw.lot, "Lot number", errors, max_len=LOT_MAX, required=True)
        given_by = parse_code("given_by", raw.given_by, GIVEN_BY, "Given by", errors) or ""

    findings: list[FieldError] = []
    warnings: list[FieldError] = []
    if not missed:
        findings = _findings(day, dose, count, ctx)
        if at is not None and at > LATE_DOSE_AFTER:
            warnings.append(FieldError("time", "late_dose",
                                       f"Given after {LATE_DOSE_AFTER:%H:%M}: the product can "
                                       "disturb sleep"))
    if errors or day is None or count is None or nostril is None:
        return DoseCheck(None, errors, findings, warnings)
    record = DoseRecord(day, at, dose, count, nostril, route, lot, given_by, missed, reason)
    return DoseCheck(record, errors, findings, warnings)


def _findings(day: dt.date | None, dose: Decimal | None, count: int | None,
              ctx: DoseContext) -> list[FieldError]:
    reg = ctx.regimen
    out: list[FieldError] = []
    lo, hi = dec(reg.dose_mg_per_instillation.min), dec(reg.dose_mg_per_instillation.max)
    if dose is not None and not lo <= dose <= hi:
        out.append(FieldError("dose_mg", "dose_range",
                              f"{dose} mg per instillation is outside the regimen's "
                              f"{lo}–{hi} mg"))
    if day is None:
        return out
    if dose is not None and count is not None:
        same_day = [r for r in ctx.existing if r.date == day]
        out += day_findings([*same_day, _stub(day, dose, count)], reg, complete=False)
    if ctx.course_start is not None and day < ctx.course_start:
        out.append(FieldError("date", "before_course_start",
                              f"Dosed before the course start ({ctx.course_start.isoformat()})"))
    spans = course_spans([*(r.date for r in ctx.existing if not r.missed), day], reg)
    i = next(i for i, (s, e) in enumerate(spans) if s <= day <= e)
    start, end = spans[i]
    length = (day - start).days + 1
    if length > reg.course_days.max:
        out.append(FieldError("date", "course_too_long",
                              f"Day {length} of a course that began {start.isoformat()}; the "
                              f"regimen allows at most {reg.course_days.max} days"))
    if reg.cycle is not None:
        washout = reg.cycle.washout_days
        if i > 0 and (free := dose_free_days(spans[i - 1][1], start)) < washout:
            out.append(FieldError("date", "washout",
                                  f"In the washout: only {free} dose-free days since the "
                                  f"course ending {spans[i - 1][1].isoformat()}; the regimen "
                                  f"needs {washout}"))
        if i + 1 < len(spans) and (free := dose_free_days(end, spans[i + 1][0])) < washout:
            out.append(FieldError("date", "washout",
                                  f"Shortens the washout before the course starting "
                                  f"{spans[i + 1][0].isoformat()} to {free} dose-free days; "
                                  f"the regimen needs {washout}"))
    return out


def _stub(day: dt.date, dose: Decimal, count: int) -> DoseRecord:
    return DoseRecord(day, None, dose, count, "", INTRANASAL, "", "")


def day_findings(records_of_day: Iterable[DoseRecord], regimen: RegimenDef,
                 complete: bool = True) -> list[FieldError]:
    """The day-level rules for the records of one day.

    Daily total above regimen.daily_max_mg and instillations above the maximum can be judged
    at any time; instillations below the minimum only for a completed day (complete=True).
    """
    records = list(records_of_day)
    total = sum((r.total_mg for r in records), Decimal(0))
    count = sum(r.instillations for r in records)
    per_day = regimen.instillations_per_day
    out = []
    if total > dec(regimen.daily_max_mg):
        out.append(FieldError("dose_mg", "daily_max",
                              f"{total} mg on this day is more than the regimen's daily "
                              f"maximum of {dec(regimen.daily_max_mg)} mg"))
    if count > per_day.max:
        out.append(FieldError("instillations", "instillations_above_max",
                              f"{count} instillations on this day; the regimen allows at most "
                              f"{per_day.max}"))
    if complete and count < per_day.min:
        out.append(FieldError("instillations", "instillations_below_min",
                              f"{count} instillations on this day; the regimen needs at least "
                              f"{per_day.min}"))
    return out


def review_days(records: Iterable[DoseRecord], regimen: RegimenDef, first: dt.date,
                last: dt.date) -> dict[dt.date, list[FieldError]]:
    """Day-level findings for each completed day first..last (days without records count)."""
    by_day: dict[dt.date, list[DoseRecord]] = {}
    for r in records:
        if first <= r.date <= last:
            by_day.setdefault(r.date, []).append(r)
    out = {}
    for n in range((last - first).days + 1):
        day = first + dt.timedelta(days=n)
        if found := day_findings(by_day.get(day, ()), regimen):
            out[day] = found
    return out


USUAL_GAP = dt.timedelta(hours=4)
USUAL_LAST = dt.time(14, 0)


def usual_day(regimen: RegimenDef, day: dt.date, start_time: dt.time, *, lot: str = "",
              given_by: str = "SELF") -> list[DoseInput]:
    """The usual administrations of a day, ready to edit and save.

    instillations_per_day.min administrations of one instillation of the minimum dose,
    alternating left and right nostril, from start_time every 4 hours, brought closer together
    (to whole 5 minutes) so the last is at 14:00 at the latest, or at 18:00 when the day starts
    after 14:00. Raises ValueError for a start after 18:00.
    """
    if start_time > LATE_DOSE_AFTER:
        raise ValueError(f"start_time must be at or before {LATE_DOSE_AFTER:%H:%M}")
    n = regimen.instillations_per_day.min
    start = dt.datetime.combine(day, start_time)
    latest = dt.datetime.combine(day, USUAL_LAST if start_time <= USUAL_LAST
                                 else LATE_DOSE_AFTER)
    gap = USUAL_GAP if n == 1 else min(USUAL_GAP, (latest - start) / (n - 1))
    gap = dt.timedelta(minutes=int(gap.total_seconds() // 300) * 5)
    dose = format(dec(regimen.dose_mg_per_instillation.min).normalize(), "f")
    return [DoseInput(date=day.isoformat(), time=f"{start + k * gap:%H:%M}", dose_mg=dose,
                      instillations="1", nostril=("LEFT", "RIGHT")[k % 2], route=INTRANASAL,
                      lot=lot, given_by=given_by)
            for k in range(n)]
