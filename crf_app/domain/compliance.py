"""Courses of treatment and dosing compliance (pure Python, O(1) work per dosing record).

Courses
    A *dosing day* is a date with at least one given (not missed) dose. For a regimen without a
    cycle every dose of a subject belongs to one course. For a cyclic regimen (`regimen.cycle`
    set) the dosing days, in date order, are split into courses: two consecutive dosing days
    are in the same course when at most `MAX_INTERRUPTION_DAYS` (2) dose-free days lie between
    them (a forgotten weekend interrupts a course, and compliance counts those days as missed);
    a longer gap ends the course. A course starts on its first and ends on its last dosing day.
    Missed-dose records never start, end or join a course; they are listed with the latest
    course that starts on or before their date (the first course when none does).

Washout (cyclic regimens)
    The `washout_days` calendar days after the end of a course are its washout: a dose on day
    d is in the washout of a course ending on day e when 1 <= (d - e).days <= washout_days. So
    at least `washout_days` dose-free days must separate two courses; with a 30-day washout a
    course ending on 1 March allows the next course to start on 1 April at the earliest.

Compliance
    Planned instillations = `instillations_per_day.min` × the days of the window (both ends
    included). Given instillations are counted per day and capped at that day's plan: extra
    instillations on one day never raise compliance above 100 % and never make up for a missed
    day; they are reported separately as `above_plan`. Records outside the window are ignored.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, time, timedelta
from typing import TYPE_CHECKING

from crf_app.domain.protocol import RegimenDef

if TYPE_CHECKING:
    from crf_app.domain.dosing import DoseRecord

MAX_INTERRUPTION_DAYS = 2


def course_spans(dosing_days: Iterable[date], regimen: RegimenDef) -> list[tuple[date, date]]:
    """(first, last) dosing day of each course, in order, for the given dosing days."""
    days = sorted(set(dosing_days))
    if not days:
        return []
    if regimen.cycle is None:
        return [(days[0], days[-1])]
    spans = []
    start = prev = days[0]
    for day in days[1:]:
        if (day - prev).days - 1 > MAX_INTERRUPTION_DAYS:
            spans.append((start, prev))
            start = day
        prev = day
    spans.append((start, prev))
    return spans


def dose_free_days(earlier_end: date, later_start: date) -> int:
    """The dose-free days between the end of one course and the start of the next."""
    return (later_start - earlier_end).days - 1


@dataclass(frozen=True)
class Course:
    """One course: first and last dosing day, and its records in date and time order."""

    start: date
    end: date
    records: tuple[DoseRecord, ...]

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def _order(r: DoseRecord) -> tuple[date, time]:
    return r.date, r.time or time.min


def courses(records: Iterable[DoseRecord], regimen: RegimenDef) -> list[Course]:
    """A subject's records split into courses (see the module docstring); [] with no dose."""
    records = list(records)
    spans = course_spans((r.date for r in records if not r.missed), regimen)
    if not spans:
        return []
    starts = [s for s, _ in spans]
    buckets: list[list[DoseRecord]] = [[] for _ in spans]
    for r in records:
        buckets[max(bisect_right(starts, r.date) - 1, 0)].append(r)
    return [Course(s, e, tuple(sorted(b, key=_order))) for (s, e), b in zip(spans, buckets,
                                                                               strict=True)]


@dataclass(frozen=True)
class Compliance:
    """Instillations given against planned over a window of days."""

    planned: int
    given: int
    above_plan: int
    missed_records: int
    days: int
    full_days: int

    @property
    def ratio(self) -> float | None:
        """given / planned, 0.0–1.0; None when nothing was planned yet."""
        return self.given / self.planned if self.planned else None

    @property
    def percent(self) -> float | None:
        ratio = self.ratio
        return None if ratio is None else round(100 * ratio, 1)


def compliance(records: Iterable[DoseRecord], regimen: RegimenDef, course_start: date,
               course_end: date, as_of: date | None = None) -> Compliance:
    """Compliance over course_start..course_end (cut at as_of when given); see module doc."""
    last = course_end if as_of is None or as_of > course_end else as_of
    days = (last - course_start).days + 1
    if days <= 0:
        return Compliance(0, 0, 0, 0, 0, 0)
    per_day = regimen.instillations_per_day.min
    given_by_day: dict[date, int] = {}
    missed = 0
    for r in records:
        d = r.date
        if course_start <= d <= last:
            if r.missed:
                missed += 1
            else:
                given_by_day[d] = given_by_day.get(d, 0) + r.instillations
    given = above = full = 0
    for n in given_by_day.values():
        if n >= per_day:
            given += per_day
            above += n - per_day
            full += 1
        else:
            given += n
    return Compliance(per_day * days, given, above, missed, days, full)


def course_compliance(records: Sequence[DoseRecord], regimen: RegimenDef,
                      as_of: date | None = None) -> list[tuple[Course, Compliance]]:
    """Compliance of each course (for cyclic regimens).

    A course's window runs from its start to its end, or to start + course_days.min - 1 when
    the course stopped early, but never into the next course, and never past as_of.
    """
    found = courses(records, regimen)
    out = []
    for i, course in enumerate(found):
        end = max(course.end, course.start + timedelta(days=regimen.course_days.min - 1))
        if i + 1 < len(found):
            end = min(end, found[i + 1].start - timedelta(days=1))
        out.append((course, compliance(course.records, regimen, course.start, end, as_of)))
    return out
