"""A subject's casebook and the blank CRF book, as plain frozen data (what the PDFs print).

Pure Python. The services gather a `Casebook` from the database; the PDF exports render it
without knowing where it came from. `form_record` turns one saved form (its definition and the
raw values stored for it) into what is printed: display values with units, out-of-range flags
from the item's hard and soft limits, and "not applicable" for items hidden by branching.
`casebook_digest` is the SHA-256 of the canonical JSON of the data, printed in every footer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from crf_app.domain.adverse_events import (
    AE_ACTIONS,
    AE_LOCATIONS,
    AE_OUTCOMES,
    AE_RELATIONSHIPS,
    AE_SEVERITIES,
    AE_TERMS,
    NOT_APPLICABLE,
    OTHER,
    SERIOUSNESS_CRITERIA,
    AdverseEvent,
)
from crf_app.domain.compliance import course_compliance
from crf_app.domain.dosing import GIVEN_BY, NOSTRILS, DoseRecord
from crf_app.domain.forms import FormDef, ItemDef, validate_form
from crf_app.domain.forms.types import display_value, format_limit, soft_range_text
from crf_app.domain.protocol import RegimenDef

Key = tuple[str, int]  # (item id, row index); row 0 outside repeating sections


@dataclass(frozen=True)
class StudyInfo:
    study_id: str
    title: str
    protocol_number: str
    protocol_version: str
    sponsor: str = ""


@dataclass(frozen=True)
class SubjectInfo:
    screening_number: str
    initials: str
    sex: str
    birth_year: int
    site_code: str
    site_name: str
    arm_code: str
    arm_name: str
    status: str  # label, e.g. "On study"
    status_reason: str = ""
    status_date: date | None = None
    consent_date: date | None = None
    baseline_date: date | None = None


@dataclass(frozen=True)
class ItemRecord:
    """One printed value. `value` is the display text without the unit ('' when empty).

    flag: '' (in range), 'low' / 'high' (outside the soft limits: kept and queried),
    'below_min' / 'above_max' (outside the hard limits); flag_text says which limit.
    """

    item_id: str
    label: str
    value: str = ""
    unit: str = ""
    code: str = ""
    not_applicable: bool = False
    computed: bool = False
    flag: str = ""
    flag_text: str = ""
    queries: tuple[int, ...] = ()

    @property
    def out_of_range(self) -> bool:
        return bool(self.flag)

    @property
    def text(self) -> str:
        """The value with its unit ('' when empty or not applicable)."""
        if self.not_applicable or not self.value:
            return ""
        return f"{self.value} {self.unit}" if self.unit else self.value


@dataclass(frozen=True)
class Column:
    item_id: str
    label: str
    unit: str = ""


@dataclass(frozen=True)
class SectionRecord:
    """A plain section (`items`) or a repeating one (`columns` and one tuple per row)."""

    section_id: str
    title: str
    repeating: bool = False
    items: tuple[ItemRecord, ...] = ()
    columns: tuple[Column, ...] = ()
    rows: tuple[tuple[ItemRecord, ...], ...] = ()


@dataclass(frozen=True)
class FormRecord:
    form_id: str
    title: str
    version: int
    status: str  # label, e.g. "Complete"
    updated_at: datetime | None = None
    updated_by: str = ""
    sections: tuple[SectionRecord, ...] = ()


@dataclass(frozen=True)
class VisitRecord:
    code: str
    name: str
    day: int
    planned_date: date | None = None
    window_start: date | None = None
    window_end: date | None = None
    actual_date: date | None = None
    status: str = ""
    deviation: str = ""
    forms: tuple[FormRecord, ...] = ()
    missing_forms: tuple[str, ...] = ()  # titles of scheduled forms with no data


@dataclass(frozen=True)
class AdverseEventRow:
    number: int
    term: str
    start_date: date
    start_time: time | None
    end_date: date | None
    ongoing: bool
    severity: str
    grade: int
    serious: bool
    criteria: tuple[str, ...] = ()
    relationship: str = ""
    action: str = ""
    outcome: str = ""
    location: str = ""
    treatment: str = ""


@dataclass(frozen=True)
class DoseRow:
    date: date
    time: time | None
    dose_mg: str  # '' for a missed dose
    instillations: int
    total_mg: str
    nostril: str = ""
    lot: str = ""
    given_by: str = ""
    missed: bool = False
    missed_reason: str = ""


@dataclass(frozen=True)
class QueryMessageRecord:
    at: datetime
    by: str
    kind: str  # open / answer / close / reopen ...
    text: str


@dataclass(frozen=True)
class QueryRecord:
    number: int
    visit: str
    form: str
    item: str
    row: int | None  # 1-based row of a repeating table, else None
    state: str
    origin: str  # auto / manual
    opened_at: datetime
    opened_by: str
    closed_at: datetime | None = None
    closed_by: str = ""
    messages: tuple[QueryMessageRecord, ...] = ()


@dataclass(frozen=True)
class SignatureRecord:
    printed_name: str
    username: str
    signed_at: datetime  # UTC
    meaning: str
    scope: str = ""


@dataclass(frozen=True)
class AuditRow:
    at: datetime  # UTC
    username: str
    action: str
    entity: str
    entity_id: str
    field: str = ""
    old: str | None = None
    new: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Casebook:
    """Everything printed in one subject's completed casebook."""

    study: StudyInfo
    subject: SubjectInfo
    generated_at: datetime  # UTC
    generated_by: str
    app_version: str
    visits: tuple[VisitRecord, ...] = ()
    adverse_events: tuple[AdverseEventRow, ...] = ()
    doses: tuple[DoseRow, ...] = ()
    dosing_compliance: str = ""
    queries: tuple[QueryRecord, ...] = ()
    signatures: tuple[SignatureRecord, ...] = ()
    audit: tuple[AuditRow, ...] = ()


@dataclass(frozen=True)
class BlankVisit:
    code: str
    name: str
    day: int
    window_before: int
    window_after: int
    forms: tuple[str, ...]


@dataclass(frozen=True)
class BlankBook:
    """The study's blank CRF book: the schedule and the definition of every form."""

    study: StudyInfo
    visits: tuple[BlankVisit, ...]
    forms: tuple[FormDef, ...]
    generated_at: datetime
    generated_by: str
    app_version: str

    def form(self, form_id: str) -> FormDef:
        for f in self.forms:
            if f.id == form_id:
                return f
        raise KeyError(f"no form {form_id!r} in the blank book")


# --- canonical JSON and the digest -----------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} in a casebook")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_LEAVES = frozenset({str, int, float, bool, type(None), datetime, date, time, Decimal})


def _plain(value: Any) -> Any:
    """What `dataclasses.asdict` gives for the casebook's frozen data (dicts, lists and the
    leaf values), without its deep copies: a casebook holds thousands of records."""
    cls = type(value)
    if cls in _LEAVES:
        return value
    names = _FIELD_NAMES.get(cls)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def casebook_json(casebook: Casebook) -> bytes:
    """Canonical JSON of the casebook's data (sorted keys, UTF-8, no whitespace).

    The generation stamp (when, by whom) is left out, so two exports of unchanged data carry
    the same digest and a reader can tell at a glance whether the data differ.
    """
    data = _plain(casebook)
    del data["generated_at"], data["generated_by"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_json_default).encode("utf-8")


def casebook_digest(casebook: Casebook) -> str:
    """SHA-256 (hex) of `casebook_json`."""
    return hashlib.sha256(casebook_json(casebook)).hexdigest()


# --- from a saved form to what is printed ----------------------------------------------------
def _number(canonical: str) -> Decimal | None:
    try:
        return Decimal(canonical)
    except (InvalidOperation, ValueError):
        return None


def range_flag(item: ItemDef, canonical: str | None) -> tuple[str, str]:
    """(flag, sentence) for a numeric value outside the item's hard or soft limits."""
    if not canonical or item.type not in ("integer", "decimal"):
        return "", ""
    value = _number(canonical)
    if value is None:
        return "", ""
    hmin, hmax, smin, smax = item.bounds
    unit = f" {item.unit}" if item.unit else ""
    if hmin is not None and value < hmin:
        return "below_min", f"below the minimum {format_limit(item, hmin)}{unit}"
    if hmax is not None and value > hmax:
        return "above_max", f"above the maximum {format_limit(item, hmax)}{unit}"
    low = smin is not None and value < smin
    high = smax is not None and value > smax
    if not (low or high):
        return "", ""
    where = "below" if low else "above"
    if item.soft is not None and item.soft.flag:
        return ("low" if low else "high"), f"{where} the {item.soft.flag} ({soft_range_text(item)})"
    bound = format_limit(item, smin if low else smax)  # type: ignore[arg-type]
    what = "minimum" if low else "maximum"
    return ("low" if low else "high"), f"{where} the expected {what} {bound}{unit}"


def item_record(item: ItemDef, canonical: str | None, *, hidden: bool = False,
                queries: Iterable[int] = ()) -> ItemRecord:
    """What is printed for one item: its display value, unit and flags."""
    unit = item.unit or ""
    if hidden:
        return ItemRecord(item.id, item.label, unit=unit, not_applicable=True,
                          computed=item.is_computed, queries=tuple(queries))
    canonical = canonical or ""
    shown = canonical if item.type in ("integer", "decimal") else display_value(item, canonical)
    flag, flag_text = range_flag(item, canonical)
    return ItemRecord(item.id, item.label, shown, unit, canonical, False, item.is_computed,
                      flag, flag_text, tuple(queries))


def form_record(form: FormDef, raw: Mapping[str, Any], *, status: str,
                updated_at: datetime | None = None, updated_by: str = "",
                queries: Mapping[Key, Iterable[int]] | None = None) -> FormRecord:
    """A saved form as printed. `raw` is the stored shape ({item: str} and {section: [rows]});
    branching is evaluated again so hidden items print as not applicable."""
    queries = queries or {}
    result = validate_form(form, raw, complete=False)
    sections = []
    for section in form.sections:
        if not section.repeating:
            items = tuple(item_record(item, _text(raw.get(item.id)),
                                      hidden=result.is_hidden(item.id),
                                      queries=queries.get((item.id, 0), ()))
                          for item in section.items)
            sections.append(SectionRecord(section.id, section.title, False, items))
            continue
        raw_rows = raw.get(section.id) or []
        rows = tuple(
            tuple(item_record(item, _text(row.get(item.id)),
                              hidden=result.is_hidden(item.id, index),
                              queries=queries.get((item.id, index), ()))
                  for item in section.items)
            for index, row in enumerate(raw_rows) if isinstance(row, Mapping))
        columns = tuple(Column(i.id, i.label, i.unit or "") for i in section.items)
        sections.append(SectionRecord(section.id, section.title, True, (), columns, rows))
    return FormRecord(form.id, form.title, form.version, status, updated_at, updated_by,
                      tuple(sections))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return "|".join(str(v) for v in value)
    return str(value)


# --- the two logs ----------------------------------------------------------------------------
def ae_row(number: int, ae: AdverseEvent) -> AdverseEventRow:
    """An adverse event as printed (codes turned into their labels)."""
    term = ae.verbatim if ae.term == OTHER and ae.verbatim else AE_TERMS.get(ae.term, ae.term)
    if ae.verbatim and ae.term != OTHER:
        term = f"{term} ({ae.verbatim})"
    return AdverseEventRow(
        number, term, ae.start_date, ae.start_time, ae.end_date, ae.ongoing,
        AE_SEVERITIES.get(ae.severity, ae.severity), ae.grade, ae.serious,
        tuple(SERIOUSNESS_CRITERIA.get(c, c) for c in ae.criteria),
        AE_RELATIONSHIPS.get(ae.relationship or "", ae.relationship or "Not yet assessed"),
        AE_ACTIONS.get(ae.action, ae.action), AE_OUTCOMES.get(ae.outcome, ae.outcome),
        "" if ae.location in ("", NOT_APPLICABLE) else AE_LOCATIONS.get(ae.location, ae.location),
        ae.treatment)


def dose_row(record: DoseRecord) -> DoseRow:
    """A dosing record as printed."""
    return DoseRow(
        record.date, record.time, "" if record.dose_mg is None else f"{record.dose_mg:f}",
        record.instillations, "" if record.missed else f"{record.total_mg:f}",
        NOSTRILS.get(record.nostril, record.nostril), record.lot,
        GIVEN_BY.get(record.given_by, record.given_by), record.missed, record.missed_reason)


def compliance_text(records: Iterable[DoseRecord], regimen: RegimenDef,
                    as_of: date | None = None) -> str:
    """One sentence per course: planned and given instillations, compliance, missed doses."""
    records = list(records)
    if not records:
        return "No dosing recorded."
    parts = []
    per_course = course_compliance(records, regimen, as_of)
    if not per_course:
        return f"No dose given ({len(records)} missed-dose record(s))."
    for n, (course, c) in enumerate(per_course, start=1):
        pct = "n/a" if c.percent is None else f"{c.percent:.1f} %"
        text = (f"Course {n} ({course.start.isoformat()} to {course.end.isoformat()}): "
                f"{c.given} of {c.planned} planned instillations given ({pct}) over {c.days} "
                f"day(s)")
        if c.missed_records:
            text += f"; {c.missed_records} missed-dose record(s)"
        if c.above_plan:
            text += f"; {c.above_plan} instillation(s) above plan"
        parts.append(text + ".")
    return " ".join(parts)
