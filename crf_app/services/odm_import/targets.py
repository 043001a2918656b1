"""The stored values a merge may change: an item value, a subject or visit attribute, a field
of a log row. Each says what it holds now (as the audit trail writes it) and takes a new value.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from crf_app import odm as oe
from crf_app.services.adverse_events import CRITERIA_COLUMNS
from crf_app.services.odm_export import log_text
from crf_app.storage.models import FormInstance, ItemValue, Subject, Visit


class LocalEvent:
    """One audited change of a value in this database (matched by when, who, new value)."""

    __slots__ = ("at", "id", "new", "user")

    def __init__(self, id: int, at: datetime, user: str, new: str | None):
        self.id, self.at, self.user, self.new = id, at, user, new

    @property
    def key(self) -> tuple[datetime | None, str | None, str | None]:
        return (self.at, self.user, self.new)


class Target:
    """One stored value the merge may change."""

    entity: str
    entity_id: str
    field: str
    row: int = 0
    visit_id: int | None = None
    form_instance_id: int | None = None

    def current(self) -> str | None:
        raise NotImplementedError

    def apply(self, value: str | None) -> None:
        raise NotImplementedError


class NewValue:
    """An item value of a form created by this merge, inserted in bulk with its subject."""

    __slots__ = ("fi", "item_id", "row", "value")

    def __init__(self, fi: FormInstance, item_id: str, row: int, value: str):
        self.fi, self.item_id, self.row, self.value = fi, item_id, row, value


class ItemTarget(Target):
    def __init__(self, s: Session, fi: FormInstance, store: dict[tuple[str, int], Any],
                 item_id: str, row: int, entity_id: str,
                 new_values: list[NewValue] | None = None):
        self.s, self.fi, self.store, self.new_values = s, fi, store, new_values
        self.entity, self.entity_id, self.field, self.row = "item", entity_id, item_id, row
        self.visit_id, self.form_instance_id = fi.visit_id, fi.id

    def current(self) -> str | None:
        iv = self.store.get((self.field, self.row))
        return iv.value if iv is not None else None

    def apply(self, value: str | None) -> None:
        key = (self.field, self.row)
        iv = self.store.get(key)
        if value is None:
            if isinstance(iv, NewValue):
                assert self.new_values is not None
                self.new_values.remove(iv)
                del self.store[key]
            elif iv is not None:
                self.s.delete(iv)
                del self.store[key]
        elif iv is None:
            if self.fi.id is None and self.new_values is not None:
                iv = NewValue(self.fi, self.field, self.row, value)  # inserted in bulk
                self.new_values.append(iv)
            else:
                iv = ItemValue(form_instance_id=self.fi.id, item_id=self.field,
                               row_index=self.row, value=value)
                self.s.add(iv)
            self.store[key] = iv
        else:
            iv.value = value


def typed(attr: str, text: str | None, *, visit: bool = False) -> Any:
    """A subject or visit attribute from its text."""
    if attr in ("consent_date", "enrolled_on", "baseline_date", "status_date", "planned_date",
                "actual_date"):
        return date.fromisoformat(text) if text else None
    if attr == "birth_year":
        return int(text) if text else None
    if text is None:
        return "planned" if visit and attr == "status" else ""
    return text


class AttrTarget(Target):
    """A subject or visit attribute (`obj` a stored row, or the plain object of a new one)."""

    def __init__(self, obj: Subject | Visit | Any, f: oe.RecordField, entity_id: str,
                 site_ids: dict[str, int], *, visit: bool | None = None):
        self.obj, self.attr, self.site_ids = obj, f.attr, site_ids
        self.visit = isinstance(obj, Visit) if visit is None else visit
        self.entity = "visit" if self.visit else "subject"
        self.entity_id, self.field = entity_id, f.attr
        self.visit_id = obj.id if self.visit else None

    def current(self) -> str | None:
        if self.attr == "site":
            return next((c for c, i in self.site_ids.items() if i == self.obj.site_id), None)
        return oe.text_of(getattr(self.obj, self.attr))

    def apply(self, value: str | None) -> None:
        if self.attr == "site":
            if value is not None:
                self.obj.site_id = self.site_ids[value]
            return
        setattr(self.obj, self.attr, typed(self.attr, value, visit=self.visit))


# --- log rows -----------------------------------------------------------------------------------
def log_typed(f: oe.LogField, text: str | None) -> Any:
    """A log column's value from its text (as the services store it)."""
    kind = f.data_type
    if f.codelist == "CL.CRFAPP.NY":
        return text == "Y"
    if kind == "date":
        return date.fromisoformat(text) if text else None
    if kind == "time":
        return time.fromisoformat(text) if text else None
    if kind == "datetime":
        if not text:
            return None
        at = datetime.fromisoformat(text)
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if kind == "integer":
        return int(text) if text else None
    if kind == "float":
        return Decimal(text) if text else None
    if f.attr == "relationship":  # None until causality is assessed
        return text or None
    return text or ""


def log_columns(f: oe.LogField, text: str | None) -> dict[str, Any]:
    """The model columns one log field sets (the seriousness criteria set six flags)."""
    if f.attr == "criteria":
        codes = set(text.split(",")) if text else set()
        return {col: code in codes for code, col in CRITERIA_COLUMNS.items()}
    return {f.model_column: log_typed(f, text)}


def log_current(f: oe.LogField, get: Any) -> str | None:
    """A log field as text, `get(column)` reading the row (the export's log_values)."""
    if f.attr == "criteria":
        return ",".join(code for code, col in CRITERIA_COLUMNS.items() if get(col)) or None
    return log_text(get(f.model_column))


class LogTarget(Target):
    """One field of a log row: a stored row (ORM object) or one being added (column dict)."""

    def __init__(self, log: oe.LogDef, f: oe.LogField, row: Any, entity_id: str):
        self.log, self.f, self.obj = log, f, row
        self.entity, self.entity_id, self.field = log.entity, entity_id, f.attr

    def _get(self, column: str) -> Any:
        return self.obj.get(column) if isinstance(self.obj, dict) else getattr(self.obj, column)

    def current(self) -> str | None:
        return log_current(self.f, self._get)

    def apply(self, value: str | None) -> None:
        for column, typed_value in log_columns(self.f, value).items():
            if isinstance(self.obj, dict):
                self.obj[column] = typed_value
            else:
                setattr(self.obj, column, typed_value)
