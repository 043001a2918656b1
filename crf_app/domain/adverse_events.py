"""Adverse events (CDASH AE): codelists, the rules of the AE dialog, the SAE clock, summaries.

Pure Python. `validate_adverse_event` turns the raw strings of the dialog into a typed
`AdverseEvent` or says, field by field, which rule each value broke. The small parsers of raw
dates, times, codes and free text at the top are shared with the dosing log (`dosing.py`) so both
logs accept and refuse the same spellings.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import Enum
from types import MappingProxyType

from crf_app.domain.errors import FieldError
from crf_app.domain.subjects import SubjectStatus

# --- raw input parsing (shared with dosing.py) --------------------------------------------
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
# Refused in free text: C0/C1 controls (tabs, line breaks), lone surrogates (cannot be stored as
# UTF-8), line/paragraph separators, and bidi overrides that make text display differently from
# what was stored.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def raw_text(value: object) -> str:
    """A raw widget value as stripped text ('' for None)."""
    return "" if value is None else str(value).strip()


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def parse_date(name: str, raw: object, label: str, errors: list[FieldError],
               required: bool = False) -> date | None:
    """A 'YYYY-MM-DD' date, or None (empty, or broken: then an error is appended)."""
    text = raw_text(raw)
    if not text:
        if required:
            errors.append(FieldError(name, "required", f"{label} is required"))
        return None
    if _DATE.fullmatch(text):
        try:
            return date(int(text[:4]), int(text[5:7]), int(text[8:]))
        except ValueError:
            pass
    errors.append(FieldError(name, "date", f"{label} {_shown(text)} is not a real date; "
                                           "write it YYYY-MM-DD, e.g. 2026-03-07"))
    return None


def parse_time(name: str, raw: object, label: str, errors: list[FieldError],
               required: bool = False) -> time | None:
    """An 'HH:MM' 24-hour time (00:00–23:59), or None (empty, or broken: error appended)."""
    text = raw_text(raw)
    if not text:
        if required:
            errors.append(FieldError(name, "required", f"{label} is required"))
        return None
    m = _TIME.fullmatch(text)
    if m and int(m[1]) <= 23 and int(m[2]) <= 59:
        return time(int(m[1]), int(m[2]))
    errors.append(FieldError(name, "time", f"{label} {_shown(text)} is not a time of day; "
                                           "write it HH:MM from 00:00 to 23:59, e.g. 08:30"))
    return None


def parse_code(name: str, raw: object, codelist: Mapping[str, str], label: str,
               errors: list[FieldError], required: bool = True) -> str | None:
    """A code of `codelist` (case and surrounding spaces ignored), or None (error appended)."""
    text = raw_text(raw)
    if not text:
        if required:
            errors.append(FieldError(name, "required", f"{label} is required"))
        return None
    code = text.upper()
    if code in codelist:
        return code
    errors.append(FieldError(name, "codelist", f"{label} {_shown(text)} is not one of: "
                                               f"{', '.join(codelist)}"))
    return None


def check_text(name: str, raw: object, label: str, errors: list[FieldError], *, max_len: int,
               required: bool = False) -> str:
    """Free text, stripped; refused (error appended) with control characters or too long."""
    text = raw_text(raw)
    if not text:
        if required:
            errors.append(FieldError(name, "required", f"{label} is required"))
        return ""
    if any(c in _BIDI_CONTROLS or unicodedata.category(c) in _FORBIDDEN_CATEGORIES
           for c in text):
        errors.append(FieldError(name, "control_characters",
                                 f"{label} must not contain control characters (tabs, line "
                                 "breaks or invisible direction marks)"))
    if len(text) > max_len:
        errors.append(FieldError(name, "too_long",
                                 f"{label} must be at most {max_len} characters "
                                 f"(it has {len(text)})"))
    return text


# --- codelists (code -> label, in display order) ------------------------------------------
OTHER = "OTHER"
AE_TERMS: Mapping[str, str] = MappingProxyType({
    "NASAL_IRRITATION": "Nasal irritation",
    "NASAL_DRYNESS": "Nasal dryness",
    "NASAL_BURNING": "Nasal burning",
    "HEADACHE": "Headache",
    "DIZZINESS": "Dizziness",
    "IRRITABILITY": "Irritability",
    "ANXIETY": "Anxiety",
    "RESTLESSNESS": "Restlessness",
    "INSOMNIA": "Insomnia",
    OTHER: "Other (specify verbatim term)",
})
NASAL_TERMS = frozenset({"NASAL_IRRITATION", "NASAL_DRYNESS", "NASAL_BURNING"})
NOT_APPLICABLE = "NOT_APPLICABLE"
AE_LOCATIONS: Mapping[str, str] = MappingProxyType({
    "LEFT_NOSTRIL": "Left nostril",
    "RIGHT_NOSTRIL": "Right nostril",
    "BOTH_NOSTRILS": "Both nostrils",
    NOT_APPLICABLE: "Not applicable",
})
AE_SEVERITIES: Mapping[str, str] = MappingProxyType({
    "MILD": "Mild", "MODERATE": "Moderate", "SEVERE": "Severe"})
AE_GRADES: Mapping[str, str] = MappingProxyType({
    "1": "Grade 1 – mild",
    "2": "Grade 2 – moderate",
    "3": "Grade 3 – severe or medically significant",
    "4": "Grade 4 – life-threatening",
    "5": "Grade 5 – death related to the adverse event",
})
YES_NO: Mapping[str, str] = MappingProxyType({"Y": "Yes", "N": "No"})
DEATH = "DEATH"
SERIOUSNESS_CRITERIA: Mapping[str, str] = MappingProxyType({
    DEATH: "Results in death",
    "LIFE_THREATENING": "Is life-threatening",
    "HOSPITALISATION": "Requires or prolongs hospitalisation",
    "DISABILITY": "Results in persistent or significant disability/incapacity",
    "CONGENITAL_ANOMALY": "Is a congenital anomaly/birth defect",
    "MEDICALLY_IMPORTANT": "Other medically important event",
})
AE_RELATIONSHIPS: Mapping[str, str] = MappingProxyType({
    "NOT_RELATED": "Not related",
    "UNLIKELY": "Unlikely related",
    "POSSIBLE": "Possibly related",
    "PROBABLE": "Probably related",
    "DEFINITE": "Definitely related",
})
AE_ACTIONS: Mapping[str, str] = MappingProxyType({
    "NONE": "Dose not changed",
    "DOSE_REDUCED": "Dose reduced",
    "INTERRUPTED": "Drug interrupted",
    "WITHDRAWN": "Drug withdrawn",
})
FATAL = "FATAL"
AE_OUTCOMES: Mapping[str, str] = MappingProxyType({
    "RECOVERED": "Recovered/resolved",
    "RECOVERING": "Recovering/resolving",
    "NOT_RECOVERED": "Not recovered/not resolved",
    "RECOVERED_WITH_SEQUELAE": "Recovered/resolved with sequelae",
    FATAL: "Fatal",
    "UNKNOWN": "Unknown",
})
# An outcome that says the event is over needs an end date; one that says it goes on needs
# "ongoing". UNKNOWN (e.g. lost to follow-up) fits both.
OUTCOMES_ENDED = frozenset({"RECOVERED", "RECOVERED_WITH_SEQUELAE", FATAL})
OUTCOMES_ONGOING = frozenset({"RECOVERING", "NOT_RECOVERED"})
VERBATIM_MAX = 200
TREATMENT_MAX = 500
LATE_ONSET_DAYS = 30


# --- the dialog's raw input, the context, the stored value --------------------------------
@dataclass(frozen=True)
class AeInput:
    """What the AE dialog holds, as typed: strings (codes for combos) and the two flags."""

    term: str = ""
    verbatim: str = ""
    location: str = ""
    start_date: str = ""
    start_time: str = ""
    end_date: str = ""
    ongoing: bool = False
    severity: str = ""
    grade: str = ""
    serious: str = ""
    criteria: tuple[str, ...] | list[str] = ()
    relationship: str = ""
    action: str = ""
    outcome: str = ""
    treatment: str = ""


@dataclass(frozen=True)
class AeContext:
    """What the rules need to know about the subject."""

    consent_date: date | None
    last_dose_date: date | None
    subject_status: str
    today: date


@dataclass(frozen=True)
class AdverseEvent:
    """A valid adverse event, typed and normalised, ready to store."""

    term: str
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
    relationship: str
    action: str
    outcome: str
    treatment: str


@dataclass(frozen=True)
class AeCheck:
    """`value` is None when `errors` refuse the save; `flags` are saved and flagged for review."""

    value: AdverseEvent | None
    errors: list[FieldError] = field(default_factory=list)
    flags: list[FieldError] = field(default_factory=list)


def validate_adverse_event(raw: AeInput, ctx: AeContext) -> AeCheck:
    """Check every rule of an adverse event; never raises for any strings typed."""
    errors: list[FieldError] = []
    term = parse_code("term", raw.term, AE_TERMS, "Adverse event term", errors)
    verbatim = check_text("verbatim", raw.verbatim, "Verbatim term", errors,
                          max_len=VERBATIM_MAX, required=term == OTHER)
    location = _location(term, raw.location, errors)
    start = parse_date("start_date", raw.start_date, "Start date", errors, required=True)
    start_time = parse_time("start_time", raw.start_time, "Start time", errors)
    end = parse_date("end_date", raw.end_date, "End date", errors)
    ongoing = bool(raw.ongoing)
    severity = parse_code("severity", raw.severity, AE_SEVERITIES, "Severity", errors)
    grade_code = parse_code("grade", raw.grade, AE_GRADES, "CTCAE grade", errors)
    grade = int(grade_code) if grade_code else None
    serious_code = parse_code("serious", raw.serious, YES_NO, "Serious", errors)
    criteria = _criteria(serious_code, raw.criteria, errors)
    relationship = parse_code("relationship", raw.relationship, AE_RELATIONSHIPS,
                              "Relationship to study drug", errors)
    action = parse_code("action", raw.action, AE_ACTIONS, "Action taken", errors)
    outcome = parse_code("outcome", raw.outcome, AE_OUTCOMES, "Outcome", errors)
    treatment = check_text("treatment", raw.treatment, "Treatment given", errors,
                           max_len=TREATMENT_MAX)

    _dates(start, end, ongoing, raw_text(raw.end_date), ctx, errors)
    _outcome(grade, outcome, serious_code, criteria, ongoing, end, errors)

    flags: list[FieldError] = []
    if start is not None and ctx.last_dose_date is not None:
        after = (start - ctx.last_dose_date).days
        if after > LATE_ONSET_DAYS:
            flags.append(FieldError("start_date", "late_onset",
                                    f"Started {after} days after the last dose "
                                    f"({ctx.last_dose_date.isoformat()}), more than "
                                    f"{LATE_ONSET_DAYS} days"))
    if ctx.subject_status == SubjectStatus.WITHDRAWN:
        flags.append(FieldError("subject", "subject_withdrawn",
                                "Recorded for a subject who has withdrawn from the study"))
    if errors:
        return AeCheck(None, errors, flags)
    assert term and location and start and severity and grade and serious_code
    assert relationship and action and outcome and criteria is not None
    value = AdverseEvent(term, verbatim, location, start, start_time, end, ongoing, severity,
                         grade, serious_code == "Y", criteria, relationship, action, outcome,
                         treatment)
    return AeCheck(value, errors, flags)


def _location(term: str | None, raw: object, errors: list[FieldError]) -> str | None:
    """Nasal terms need a side; other listed terms have none; OTHER may have either."""
    code = parse_code("location", raw, AE_LOCATIONS, "Location", errors,
                      required=term in NASAL_TERMS)
    if term is None:
        return code
    if code is None:
        return None if raw_text(raw) or term in NASAL_TERMS else NOT_APPLICABLE
    if term in NASAL_TERMS and code == NOT_APPLICABLE:
        errors.append(FieldError("location", "location_nasal",
                                 f"{AE_TERMS[term]} needs the nostril it affects"))
        return None
    if term not in NASAL_TERMS and term != OTHER and code != NOT_APPLICABLE:
        errors.append(FieldError("location", "location_nasal",
                                 f"A nostril applies only to the nasal terms, not to "
                                 f"{AE_TERMS[term].lower()}"))
        return None
    return code


def _criteria(serious: str | None, raw: Iterable[object] | None,
              errors: list[FieldError]) -> tuple[str, ...] | None:
    chosen: set[str] = set()
    ok = True
    for item in raw or ():
        code = parse_code("criteria", item, SERIOUSNESS_CRITERIA, "Seriousness criterion",
                          errors, required=False)
        ok = ok and (code is not None or not raw_text(item))
        if code is not None:
            chosen.add(code)
    if serious == "Y" and not chosen and ok:
        errors.append(FieldError("criteria", "criteria_required",
                                 "A serious adverse event needs at least one seriousness "
                                 "criterion"))
    if serious == "N" and chosen:
        errors.append(FieldError("criteria", "criteria_not_serious",
                                 "Seriousness criteria apply only to a serious adverse event"))
    return tuple(c for c in SERIOUSNESS_CRITERIA if c in chosen) if ok else None


def _dates(start: date | None, end: date | None, ongoing: bool, end_text: str,
           ctx: AeContext, errors: list[FieldError]) -> None:
    if start is not None and start > ctx.today:
        errors.append(FieldError("start_date", "not_future",
                                 "Start date must not be in the future"))
    if end is not None and end > ctx.today:
        errors.append(FieldError("end_date", "not_future", "End date must not be in the future"))
    if start is not None and end is not None and end < start:
        errors.append(FieldError("end_date", "end_before_start",
                                 f"End date must not be before the start date "
                                 f"({start.isoformat()})"))
    if start is not None and ctx.consent_date is not None and start < ctx.consent_date:
        errors.append(FieldError("start_date", "before_consent",
                                 f"Start date must not be before informed consent "
                                 f"({ctx.consent_date.isoformat()}); earlier events are "
                                 "medical history"))
    if ongoing and end_text:
        errors.append(FieldError("end_date", "ongoing_end_date",
                                 "An ongoing adverse event has no end date: clear the end date "
                                 "or untick Ongoing"))
    elif not ongoing and not end_text:
        errors.append(FieldError("end_date", "ongoing_end_date",
                                 "Enter the end date, or tick Ongoing"))


def _outcome(grade: int | None, outcome: str | None, serious: str | None,
             criteria: tuple[str, ...] | None, ongoing: bool, end: date | None,
             errors: list[FieldError]) -> None:
    if grade == 5 and outcome is not None and outcome != FATAL:
        errors.append(FieldError("grade", "grade5_fatal",
                                 "Grade 5 (death) requires the outcome Fatal"))
    if outcome == FATAL and grade is not None and grade != 5:
        errors.append(FieldError("outcome", "grade5_fatal",
                                 "Outcome Fatal requires CTCAE grade 5"))
    if outcome == FATAL and serious == "N":
        errors.append(FieldError("serious", "death_criterion",
                                 "A fatal adverse event is serious (criterion: death)"))
    elif outcome == FATAL and criteria and DEATH not in criteria:
        errors.append(FieldError("criteria", "death_criterion",
                                 "A fatal adverse event needs the seriousness criterion Death"))
    if outcome is not None and outcome != FATAL and criteria and DEATH in criteria:
        errors.append(FieldError("criteria", "death_criterion",
                                 "The criterion Death requires the outcome Fatal"))
    if ongoing and outcome in OUTCOMES_ENDED:
        errors.append(FieldError("outcome", "outcome_ongoing",
                                 f"An ongoing adverse event cannot have the outcome "
                                 f"{AE_OUTCOMES[outcome]!r}"))
    if end is not None and not ongoing and outcome in OUTCOMES_ONGOING:
        errors.append(FieldError("outcome", "outcome_ongoing",
                                 f"An adverse event with an end date cannot have the outcome "
                                 f"{AE_OUTCOMES[outcome]!r}; tick Ongoing instead"))


# --- SAE reporting clock ------------------------------------------------------------------
SAE_REPORTING_WINDOW = timedelta(hours=24)


class SaeState(Enum):
    RUNNING = "running"
    OVERDUE = "overdue"
    REPORTED = "reported"


@dataclass(frozen=True)
class SaeClock:
    """Where an SAE's 24-hour reporting clock stands.

    `remaining` is positive only while RUNNING; `late_by` is how far past the deadline an
    OVERDUE report is now, or a REPORTED one was when reported (zero when on time).
    """

    state: SaeState
    deadline: datetime
    remaining: timedelta
    late_by: timedelta

    @property
    def label(self) -> str:
        if self.state is SaeState.RUNNING:
            return f"{_hours_minutes(self.remaining)} left to report"
        if self.state is SaeState.OVERDUE:
            return f"Overdue by {_hours_minutes(self.late_by)}"
        if self.late_by:
            return f"Reported {_hours_minutes(self.late_by)} late"
        return "Reported on time"


def _hours_minutes(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC)")
    return value.astimezone(UTC)


def sae_deadline(recorded_at: datetime) -> datetime:
    """When the sponsor must have the SAE report: 24 hours after it was recorded (UTC)."""
    return _aware(recorded_at, "recorded_at") + SAE_REPORTING_WINDOW


def sae_clock_state(deadline: datetime, reported_at: datetime | None,
                    now: datetime) -> SaeClock:
    """The clock at `now`; a report made exactly at the deadline is on time."""
    deadline, now = _aware(deadline, "deadline"), _aware(now, "now")
    zero = timedelta(0)
    if reported_at is not None:
        late = _aware(reported_at, "reported_at") - deadline
        return SaeClock(SaeState.REPORTED, deadline, zero, max(late, zero))
    if now <= deadline:
        return SaeClock(SaeState.RUNNING, deadline, deadline - now, zero)
    return SaeClock(SaeState.OVERDUE, deadline, zero, now - deadline)


# --- summaries ----------------------------------------------------------------------------
ALL_SITES = "ALL"
ANY_TERM = "ANY"
GRADES = (1, 2, 3, 4, 5)


def ae_summary(aes: Iterable[AdverseEvent]) -> dict[tuple[str, int], int]:
    """Number of events per (term, grade)."""
    return dict(Counter((ae.term, ae.grade) for ae in aes))


@dataclass(frozen=True)
class AeTableRow:
    """One line of a term × grade table: events per grade, in total, and serious ones."""

    site: str
    term: str
    label: str
    by_grade: tuple[int, int, int, int, int]
    total: int
    serious: int


def ae_table(events: Iterable[tuple[str, str, int, bool]],
             by_site: bool = False) -> list[AeTableRow]:
    """Events (site, term, grade, serious) counted by term × grade (events, not subjects).

    Rows per term in codelist order (terms outside the codelist after them, alphabetically),
    then an ANY row; by_site adds one such block per site (sorted) before the study block,
    whose site is ALL.
    """
    counts: dict[tuple[str, str], list[int]] = {}
    for site, term, grade, serious in events:
        if grade not in GRADES:
            raise ValueError(f"grade must be 1-5, not {grade!r}")
        keys = [(ALL_SITES, term), (ALL_SITES, ANY_TERM)]
        if by_site:
            keys += [(site, term), (site, ANY_TERM)]
        for key in keys:
            row = counts.setdefault(key, [0] * 6)
            row[grade - 1] += 1
            row[5] += bool(serious)
    if not counts:
        return []
    sites = [*sorted({s for s, _ in counts if s != ALL_SITES}), ALL_SITES]
    order = {t: i for i, t in enumerate(AE_TERMS)}
    rows = []
    for site in sites:
        terms = sorted((t for s, t in counts if s == site and t != ANY_TERM),
                       key=lambda t: (order.get(t, len(order)), t))
        for term in (*terms, ANY_TERM):
            c = counts[(site, term)]
            label = "Any adverse event" if term == ANY_TERM else AE_TERMS.get(term, term)
            rows.append(AeTableRow(site, term, label, (c[0], c[1], c[2], c[3], c[4]),
                                   sum(c[:5]), c[5]))
    return rows


AE_TABLE_HEADER = ("site", "term", "label", "grade_1", "grade_2", "grade_3", "grade_4",
                   "grade_5", "total", "serious")


def ae_table_csv(events: Iterable[tuple[str, str, int, bool]],
                 by_site: bool = False) -> list[list[str]]:
    """The table as CSV rows (header first), ready for csv.writer."""
    out = [list(AE_TABLE_HEADER)]
    for r in ae_table(events, by_site):
        out.append([r.site, r.term, r.label, *map(str, r.by_grade), str(r.total),
                    str(r.serious)])
    return out


def ae_table_text(events: Iterable[tuple[str, str, int, bool]], by_site: bool = False) -> str:
    """The table as aligned plain text, one block per site."""
    rows = ae_table(events, by_site)
    if not rows:
        return "No adverse events."
    width = max(len("Adverse event"), *(len(r.label) for r in rows))
    head = (f"{'Adverse event':<{width}}  " + "  ".join(f"{f'G{g}':>4}" for g in GRADES)
            + "  Total  Serious")
    lines: list[str] = []
    for site in dict.fromkeys(r.site for r in rows):
        if lines:
            lines.append("")
        lines += [f"Site {site}" if site != ALL_SITES else "All sites", head]
        for r in (r for r in rows if r.site == site):
            lines.append(f"{r.label:<{width}}  " + "  ".join(f"{n:>4}" for n in r.by_grade)
                         + f"  {r.total:>5}  {r.serious:>7}")
    return "\n".join(lines)
