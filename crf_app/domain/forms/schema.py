"""Form definitions (pydantic, validated on load): codes, items, sections, edit checks, forms.

Item-level rules (type-consistent attributes, limits, expression syntax) are checked here; rules
that need the whole form (unique ids, references, cycles, expression types) in `analysis`.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from crf_app.domain.errors import ProtocolError
from crf_app.domain.forms.expressions import Expression, ExpressionError, parse_expression

ITEM_ID_PATTERN = r"^[A-Z][A-Z0-9_]{0,31}$"
FORM_ID_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
CODELIST_PATTERN = r"^[A-Z][A-Z0-9_]{0,39}$"
CODE_PATTERN = r"^[A-Za-z0-9_.+-]{1,40}$"

ItemType = Literal["text", "integer", "decimal", "date", "partial_date", "time", "datetime",
                   "choice", "multi_choice", "yes_no"]
ITEM_TYPES: tuple[str, ...] = ItemType.__args__  # type: ignore[attr-defined]
NUMERIC_TYPES = frozenset({"integer", "decimal"})
CODED_TYPES = frozenset({"choice", "multi_choice"})
DEFAULT_TEXT_LENGTH = 200


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __eq__(self, other: object) -> bool:  # fields only; compiled caches do not count
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:  # cheap and consistent with __eq__ (equal objects share these)
        return hash((type(self).__name__, self.__dict__.get("id"), self.__dict__.get("code")))


class Code(_Strict):
    """One permitted value of a coded item: the stored code and the label shown."""

    code: str = Field(pattern=CODE_PATTERN)
    label: str = Field(min_length=1, max_length=300)

    @field_validator("code", mode="before")
    @classmethod
    def _number_as_code(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, bool):
            raise ValueError("a code must be text; quote it (YAML reads yes/no/on/off as "
                             "true/false)")
        return v


YES_NO_CODES = (Code(code="Y", label="Yes"), Code(code="N", label="No"))
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
CodeList = Annotated[list[Code], Field(min_length=1)]
CodelistName = Annotated[str, Field(pattern=CODELIST_PATTERN)]


class Limits(_Strict):
    """Hard limits: a value outside is refused."""

    min: Finite | None = None
    max: Finite | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) must not exceed max ({self.max:g})")
        return self


class SoftLimits(Limits):
    """Soft limits (expected or reference range): a value outside is kept and queried."""

    flag: str | None = Field(default=None, min_length=1, max_length=60)


def as_decimal(value: float | None) -> Decimal | None:
    """A limit as an exact Decimal (shortest repr of the float, so 0.1 is 0.1)."""
    return None if value is None else Decimal(repr(value))


class ItemDef(_Strict):
    """One data item (CDASH-style upper-case id) and every rule its value must satisfy."""

    id: str = Field(pattern=ITEM_ID_PATTERN)
    label: str = Field(min_length=1, max_length=200)
    help: str = ""
    type: ItemType
    unit: str | None = Field(default=None, min_length=1, max_length=30)
    precision: int | None = Field(default=None, ge=0, le=6)
    max_length: int | None = Field(default=None, ge=1, le=4000)
    hard: Limits | None = None
    soft: SoftLimits | None = None
    required: bool = False
    codelist: CodelistName | CodeList | None = None
    show_if: str | None = None
    compute: str | None = None

    _codes: tuple[Code, ...] | None = PrivateAttr(default=None)
    _show_if: Expression | None = PrivateAttr(default=None)
    _compute: Expression | None = PrivateAttr(default=None)
    _bounds: tuple[Decimal | None, ...] = PrivateAttr(default=(None, None, None, None))

    @model_validator(mode="after")
    def _consistent(self) -> ItemDef:
        problems = _item_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        if isinstance(self.codelist, list):
            self._codes = tuple(self.codelist)
        elif self.type == "yes_no":
            self._codes = YES_NO_CODES
        self._show_if = parse_expression(self.show_if) if self.show_if else None
        self._compute = parse_expression(self.compute) if self.compute else None
        self._bounds = tuple(as_decimal(getattr(lim, end, None)) if lim else None
                             for lim in (self.hard, self.soft) for end in ("min", "max"))
        return self

    # --- what the engine, GUI and exports use ----------------------------------------------
    @property
    def is_computed(self) -> bool:
        return self.compute is not None

    # The engine reads these on every value it checks: they read the private attributes
    # straight from pydantic's dict (`self._codes` goes through BaseModel.__getattr__, ~1 µs).
    @property
    def codes(self) -> tuple[Code, ...]:
        """The permitted codes (choice, multi_choice, yes_no); empty for other types."""
        codes = self.__pydantic_private__["_codes"]  # type: ignore[index]
        if codes is None:
            if isinstance(self.codelist, str):
                raise ProtocolError(f"item {self.id}: codelist {self.codelist!r} is not resolved;"
                                    " use the item through its FormDef")
            return ()
        return codes  # type: ignore[no-any-return]

    def code_label(self, code: str) -> str | None:
        for c in self.codes:
            if c.code == code:
                return c.label
        return None

    @property
    def show_if_expr(self) -> Expression | None:
        return self.__pydantic_private__["_show_if"]  # type: ignore[index,no-any-return]

    @property
    def compute_expr(self) -> Expression | None:
        return self.__pydantic_private__["_compute"]  # type: ignore[index,no-any-return]

    @property
    def text_limit(self) -> int:
        return self.max_length or DEFAULT_TEXT_LENGTH

    @property
    def bounds(self) -> tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None]:
        """(hard min, hard max, soft min, soft max) as exact Decimals."""
        return self.__pydantic_private__["_bounds"]  # type: ignore[index,no-any-return]


def _item_problems(item: ItemDef) -> list[str]:
    t = item.type
    out: list[str] = []
    if item.unit is not None and t not in NUMERIC_TYPES:
        out.append(f"unit: only integer and decimal items have a unit, not a {t} item")
    if t == "decimal" and item.precision is None:
        out.append("precision: a decimal item needs a precision (number of decimals)")
    if t != "decimal" and item.precision is not None:
        out.append(f"precision: only decimal items have a precision, not a {t} item")
    if item.max_length is not None and t != "text":
        out.append(f"max_length: only text items have a max_length, not a {t} item")
    for name in ("hard", "soft"):
        lim = getattr(item, name)
        if lim is not None and t not in NUMERIC_TYPES:
            out.append(f"{name}: limits apply to integer and decimal items only, not a {t} item")
            continue
        for end in ("min", "max"):
            value = getattr(lim, end) if lim else None
            if value is None:
                continue
            places = -as_decimal(value).normalize().as_tuple().exponent  # type: ignore[union-attr,operator]
            if t == "integer" and value != int(value):
                out.append(f"{name}.{end}: {value:g} is not a whole number (integer item)")
            elif t == "decimal" and places > (item.precision or 0):
                out.append(f"{name}.{end}: {value:g} has more decimals than precision "
                           f"{item.precision}")
    if item.hard and item.soft:
        h, s = item.hard, item.soft
        if (s.min is not None and h.min is not None and s.min < h.min) or \
                (s.max is not None and h.max is not None and s.max > h.max):
            out.append("soft: soft limits must lie within the hard limits")
    if t in CODED_TYPES and item.codelist is None:
        out.append(f"codelist: a {t} item needs a codelist (a shared codelist name or codes)")
    if t not in CODED_TYPES and item.codelist is not None:
        hint = " (yes_no items have the built-in codes Y/N)" if t == "yes_no" else ""
        out.append(f"codelist: only choice and multi_choice items have a codelist{hint}")
    if isinstance(item.codelist, list):
        out.extend(_code_problems(item.codelist, "codelist"))
    if item.compute is not None and item.required:
        out.append("required: a computed item is filled in by the app and cannot be required")
    for name in ("show_if", "compute"):
        source = getattr(item, name)
        if source is not None:
            try:
                parse_expression(source)
            except ExpressionError as exc:
                out.append(f"{name}: {exc}")
    return out


def _code_problems(codes: list[Code], path: str) -> list[str]:
    seen: set[str] = set()
    out = []
    for i, c in enumerate(codes):
        if c.code in seen:
            out.append(f"{path}.{i}.code: duplicate code {c.code!r}")
        seen.add(c.code)
    return out


class SectionDef(_Strict):
    """A group of items; a repeating section is a table of rows (e.g. one row per medicine)."""

    id: str = Field(pattern=FORM_ID_PATTERN)
    title: str = Field(min_length=1)
    help: str = ""
    repeating: bool = False
    max_rows: int | None = Field(default=None, ge=1, le=1000)
    items: list[ItemDef] = Field(min_length=1)

    @model_validator(mode="after")
    def _rows(self) -> SectionDef:
        if self.max_rows is not None and not self.repeating:
            raise ValueError("max_rows: only a repeating section has rows")
        return self


class CheckDef(_Strict):
    """A cross-item edit check: `expression` must hold, else `message` (hard = refuse save)."""

    id: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
    expression: str
    message: str = Field(min_length=1)
    items: list[str] = Field(default_factory=list)
    severity: Literal["hard", "soft"] = "hard"

    _expr: Expression | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _parse(self) -> CheckDef:
        try:
            self._expr = parse_expression(self.expression)
        except ExpressionError as exc:
            raise ValueError(f"expression: {exc}") from None
        return self

    @property
    def expr(self) -> Expression:
        return self.__pydantic_private__["_expr"]  # type: ignore[index,no-any-return]


class FormDef(_Strict):
    """A case report form: versioned, fingerprinted, serialisable, validated as a whole."""

    id: str = Field(pattern=FORM_ID_PATTERN)
    version: int = Field(ge=1)
    title: str = Field(min_length=1)
    description: str = ""
    sections: list[SectionDef] = Field(min_length=1)
    checks: list[CheckDef] = Field(default_factory=list)
    codelists: dict[CodelistName, CodeList] = Field(default_factory=dict)

    _plan: Any = PrivateAttr(default=None)
    _fingerprint: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _whole_form(self) -> FormDef:
        from crf_app.domain.forms.analysis import analyse

        problems = [p for name, codes in self.codelists.items()
                    for p in _code_problems(codes, f"codelists.{name}")]
        if not problems:
            problems, self._plan = analyse(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def plan(self) -> Any:
        """The evaluation plan (crf_app.domain.forms.analysis.Plan)."""
        return self.__pydantic_private__["_plan"]  # type: ignore[index]

    @property
    def items(self) -> list[ItemDef]:
        """Every item in form order (repeating sections included)."""
        return [item for section in self.sections for item in section.items]

    def item(self, item_id: str) -> ItemDef:
        try:
            return self.plan.items[item_id]  # type: ignore[no-any-return]
        except KeyError:
            raise KeyError(f"form {self.id!r} has no item {item_id!r}") from None

    def section(self, section_id: str) -> SectionDef:
        for s in self.sections:
            if s.id == section_id:
                return s
        raise KeyError(f"form {self.id!r} has no section {section_id!r}")

    def section_of(self, item_id: str) -> SectionDef:
        self.item(item_id)
        return self.plan.section_of[item_id]  # type: ignore[no-any-return]

    def dependents(self, item_id: str) -> frozenset[str]:
        """Items whose show_if or compute depends (directly or not) on `item_id`."""
        return self.plan.dependents.get(item_id, frozenset())  # type: ignore[no-any-return]

    # --- serialisation and versioning ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; `FormDef.from_dict(f.to_dict()) == f`. Defaults are left out."""
        return self.model_dump(mode="json", exclude_defaults=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "stored form definition") -> FormDef:
        from crf_app.domain.forms.library import parse_form

        return parse_form(data, source)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the definition (changes when anything changes)."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(canonical_json(self.to_dict())).hexdigest()
        return self._fingerprint


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
