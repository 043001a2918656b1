"""The study protocol: sites, arms, visit schedule, dosing regimens (forms/study.yaml).

Validated on load with pydantic; a bad file is refused with the file name, the dotted path of
the bad key and the rule it broke.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crf_app.domain.errors import ProtocolError

_CODE = r"^[A-Za-z0-9_-]{1,40}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteDef(_Strict):
    code: str = Field(pattern=_CODE)
    name: str = Field(min_length=1)


class ArmDef(_Strict):
    code: str = Field(pattern=_CODE)
    name: str = Field(min_length=1)
    regimen: str
    placebo: bool = False


class Window(_Strict):
    before: int = Field(ge=0, le=365)
    after: int = Field(ge=0, le=365)


class VisitDef(_Strict):
    code: str = Field(pattern=_CODE)
    name: str = Field(min_length=1)
    day: int = Field(ge=-365, le=3650)
    window: Window
    forms: list[str] = Field(default_factory=list)

    @property
    def first_day(self) -> int:
        return self.day - self.window.before

    @property
    def last_day(self) -> int:
        return self.day + self.window.after


class Range(_Strict):
    min: float = Field(gt=0)
    max: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self

    def __contains__(self, value: float) -> bool:
        return self.min <= value <= self.max


class IntRange(Range):
    min: int = Field(ge=1)  # type: ignore[assignment]
    max: int = Field(ge=1)  # type: ignore[assignment]


class Cycle(_Strict):
    washout_days: int = Field(ge=1, le=365)


class RegimenDef(_Strict):
    id: str = Field(pattern=_CODE)
    indication: str = Field(min_length=1)
    dose_mg_per_instillation: Range
    instillations_per_day: IntRange
    course_days: IntRange
    cycle: Cycle | None = None
    max_daily_mg: float | None = Field(default=None, gt=0)

    @property
    def daily_max_mg(self) -> float:
        """The most a subject may receive in one day."""
        if self.max_daily_mg is not None:
            return self.max_daily_mg
        return round(self.dose_mg_per_instillation.max * self.instillations_per_day.max, 6)


class EligibilityRule(_Strict):
    """Which computed yes/no item of which form decides eligibility (N = screen failure)."""

    form: str
    item: str


class Protocol(_Strict):
    """A validated study protocol."""

    study_id: str = Field(pattern=_CODE)
    title: str = Field(min_length=1)
    protocol_number: str = Field(min_length=1)
    protocol_version: str = Field(min_length=1)
    sponsor: str = ""
    sites: list[SiteDef] = Field(min_length=1)
    arms: list[ArmDef] = Field(min_length=1)
    visits: list[VisitDef] = Field(min_length=1)
    regimens: list[RegimenDef] = Field(min_length=1)
    eligibility: EligibilityRule | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Protocol:
        groups = (("sites", self.sites, "code"), ("arms", self.arms, "code"),
                  ("visits", self.visits, "code"), ("regimens", self.regimens, "id"))
        for name, items, key in groups:
            seen: set[str] = set()
            for i, item in enumerate(items):
                value = getattr(item, key)
                if value in seen:
                    raise ValueError(f"{name}.{i}.{key}: duplicate {key} {value!r}")
                seen.add(value)
        regimen_ids = {r.id for r in self.regimens}
        for i, arm in enumerate(self.arms):
            if arm.regimen not in regimen_ids:
                raise ValueError(f"arms.{i}.regimen: unknown regimen {arm.regimen!r} "
                                 f"(known: {', '.join(sorted(regimen_ids))})")
        days = [v.day for v in self.visits]
        if days != sorted(days):
            raise ValueError("visits: visits must be listed in order of their study day")
        for i, visit in enumerate(self.visits):
            if len(set(visit.forms)) != len(visit.forms):
                raise ValueError(f"visits.{i}.forms: a form is listed twice")
        return self

    # --- look-ups -------------------------------------------------------------------------
    def site(self, code: str) -> SiteDef:
        return _find(self.sites, "code", code, "site")

    def arm(self, code: str) -> ArmDef:
        return _find(self.arms, "code", code, "arm")

    def visit(self, code: str) -> VisitDef:
        return _find(self.visits, "code", code, "visit")

    def regimen(self, regimen_id: str) -> RegimenDef:
        return _find(self.regimens, "id", regimen_id, "regimen")

    def form_ids(self) -> list[str]:
        """Every form used by the schedule, in first-use order."""
        out: list[str] = []
        for v in self.visits:
            out.extend(f for f in v.forms if f not in out)
        return out


def _find(items: list[Any], key: str, value: str, what: str) -> Any:
    for item in items:
        if getattr(item, key) == value:
            return item
    raise KeyError(f"unknown {what} {value!r}")


def study_day_date(baseline: date, day: int) -> date:
    """The calendar date of study day `day` when day 1 is `baseline`."""
    return baseline + timedelta(days=day - 1)


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line per broken rule: file, dotted key path, rule."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def parse_protocol(data: Any, source: str = "<protocol>") -> Protocol:
    """Validate a protocol mapping; raise ProtocolError naming source, key path and rule."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{source}: (top level): must be a mapping of keys to values")
    try:
        return Protocol.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(format_validation_error(source, exc)) from None


def load_protocol(path: Path) -> Protocol:
    """Read and validate a study.yaml file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{path}: not valid YAML: {exc}") from None
    return parse_protocol(data, str(path))
