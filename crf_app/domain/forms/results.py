"""What validating an entry gives back: issues, one item's result, a whole form's result."""

from __future__ import annotations

from dataclasses import dataclass, field

from crf_app.domain.errors import FieldError

# values / computed: {item_id: canonical str} for items outside repeating sections, and
# {section_id: [row, ...]} for each repeating section, one {item_id: canonical str} per raw row
# (same index as the row that was entered; a blank row gives {}).
Values = dict[str, "str | list[dict[str, str]]"]


@dataclass(frozen=True)
class ItemIssue:
    """One broken rule. `row` is the row index in a repeating section, else None.

    `rule` is a short machine name ("hard_max", "required", "not_a_number", ...) or the id of
    an edit check; `message` is a sentence naming the item's label and the rule; `related` lists
    the other items an edit check concerns.
    """

    item_id: str
    row: int | None
    rule: str
    message: str
    related: tuple[str, ...] = ()

    @property
    def items(self) -> tuple[str, ...]:
        """Every item the issue concerns (the item first)."""
        return (self.item_id, *self.related)

    @property
    def field(self) -> str:
        """'ITEM' or 'ITEM[row]'."""
        return self.item_id if self.row is None else f"{self.item_id}[{self.row}]"

    def as_field_error(self) -> FieldError:
        return FieldError(self.field, self.rule, self.message)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass
class ItemResult:
    """Validating one typed value: its canonical storage string (None = empty) and issues."""

    value: str | None
    errors: list[ItemIssue] = field(default_factory=list)
    warnings: list[ItemIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class FormResult:
    """Validating a whole form entry.

    values: canonical strings of every accepted, non-empty, visible item, computed items
      included (see `Values` for the shape; every repeating section has a list, maybe empty).
    errors: hard problems (refuse save); warnings: soft limits and soft checks (save, query).
    computed: the computed items' canonical values, same shape as `values` (a repeating
      section appears only if it has computed items).
    hidden: ids of items outside repeating sections whose show_if is not true; their values
      are dropped, never validated, never required. hidden_in_rows: (item id, row) likewise.
    """

    values: Values = field(default_factory=dict)
    errors: list[ItemIssue] = field(default_factory=list)
    warnings: list[ItemIssue] = field(default_factory=list)
    computed: Values = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)
    hidden_in_rows: set[tuple[str, int]] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        """No hard errors: the entry may be saved (warnings become queries)."""
        return not self.errors

    def is_hidden(self, item_id: str, row: int | None = None) -> bool:
        if row is None:
            return item_id in self.hidden
        return (item_id, row) in self.hidden_in_rows

    def issues_for(self, item_id: str, row: int | None = None) -> list[ItemIssue]:
        """Errors then warnings that concern `item_id` (in `row`, if given)."""
        return [i for i in (*self.errors, *self.warnings)
                if item_id in i.items and (row is None or i.row == row)]

    def value(self, item_id: str, row: int | None = None, section: str | None = None
              ) -> str | None:
        """One canonical value: `value("SYSBP")` or `value("CMTRT", 0, "medications")`."""
        if row is None:
            v = self.values.get(item_id)
            return v if isinstance(v, str) else None
        rows = self.values.get(section or "", [])
        if isinstance(rows, list) and 0 <= row < len(rows):
            return rows[row].get(item_id)
        return None
