"""Validating and computing a form entry: what the GUI calls on every keystroke and the services
call before saving.

`raw` maps item ids to what the user typed (str, None, or list[str] for multi_choice) and each
repeating section id to a list of rows, each such a mapping. Items are evaluated in dependency
order: an item whose show_if is not true is hidden (its value dropped, never validated or
required); a computed item's value comes from its expression (any typed value is ignored); every
other value is parsed to its canonical string and checked against its limits. Then the edit
checks run: a check fails only when its expression is definitely false (not when it cannot be
evaluated because an item it uses is empty, hidden or invalid).

A row whose items are all empty is skipped (not validated, not counted towards max_rows) and
gives {} in `values`, so row indexes always match the rows entered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crf_app.domain.forms.results import FormResult, ItemIssue, ItemResult
from crf_app.domain.forms.schema import CheckDef, FormDef, ItemDef
from crf_app.domain.forms.types import encode_computed, parse_value

RawEntry = Mapping[str, Any]


def validate_item(item: ItemDef, raw: Any, *, required: bool = False,
                  row: int | None = None) -> ItemResult:
    """Validate one typed value on its own (types, limits, codelist; `required` if asked).

    The result's value is the canonical string, or None when empty or refused.

    show_if, compute and edit checks need the whole form: use `validate_form` for those. A
    computed item accepts no input and always gives an empty result here.
    """
    if item.is_computed:
        return ItemResult(None)
    canonical, _, err, warn = parse_value(item, raw, row)
    if canonical is None and err is None and required:
        err = _required(item, row)
    if err is not None:
        return ItemResult(None, [err])
    return ItemResult(canonical, [], [warn] if warn else [])


def validate_form(form: FormDef, raw: RawEntry | None, complete: bool = False) -> FormResult:
    """Validate and compute a whole entry. `complete=True` also requires required items."""
    plan = form.plan
    raw = raw if isinstance(raw, Mapping) else {}
    result = FormResult()
    env: dict[str, Any] = {}
    for key in raw:
        if key not in plan.known_keys:
            result.errors.append(ItemIssue(str(key), None, "unknown_item",
                                           f"{key}: not an item of form {form.id!r}"))
    for item in plan.plain_order:
        _one(item, raw.get(item.id), None, env, result.values, result.computed, result,
             complete)
    for section, order, checks in plan.repeating:
        _rows(section, order, checks, raw.get(section.id), env, result, complete, plan.items)
    for check, concerned in plan.plain_checks:
        _check(check, concerned, env, None, result, plan.items)
    if len(result.errors) > 1 or len(result.warnings) > 1:
        def key(issue: ItemIssue) -> tuple[int, int]:
            return (plan.position.get(issue.item_id, -1),
                    -1 if issue.row is None else issue.row)
        result.errors.sort(key=key)
        result.warnings.sort(key=key)
    return result


def _required(item: ItemDef, row: int | None) -> ItemIssue:
    return ItemIssue(item.id, row, "required", f"{item.label}: a value is required")


def _one(item: ItemDef, raw: Any, row: int | None, env: dict[str, Any], values: dict,
         computed: dict, result: FormResult, complete: bool) -> None:
    if item.show_if_expr is not None and item.show_if_expr.evaluate(env) is not True:
        env[item.id] = None
        if row is None:
            result.hidden.add(item.id)
        else:
            result.hidden_in_rows.add((item.id, row))
        return
    if item.compute_expr is not None:
        canonical, value, err, warn = encode_computed(item, item.compute_expr.evaluate(env), row)
        if canonical is not None:
            computed[item.id] = canonical
    else:
        canonical, value, err, warn = parse_value(item, raw, row)
        if canonical is None and err is None and complete and item.required:
            err = _required(item, row)
    if err is not None:
        result.errors.append(err)
        env[item.id] = None
        return
    if warn is not None:
        result.warnings.append(warn)
    env[item.id] = value
    if canonical is not None:
        values[item.id] = canonical


def _rows(section: Any, order: tuple[ItemDef, ...], checks: tuple, raw_rows: Any,
          env: dict[str, Any], result: FormResult, complete: bool,
          items: Mapping[str, ItemDef]) -> None:
    values_rows: list[dict[str, str]] = []
    computed_rows: list[dict[str, str]] = []
    result.values[section.id] = values_rows
    if any(item.is_computed for item in order):
        result.computed[section.id] = computed_rows
    if raw_rows is None:
        return
    if not isinstance(raw_rows, list | tuple):
        result.errors.append(ItemIssue(section.id, None, "bad_value",
                                       f"{section.title}: expected a list of rows"))
        return
    entered = 0
    own = {item.id for item in order}
    for index, row in enumerate(raw_rows):
        row_values: dict[str, str] = {}
        row_computed: dict[str, str] = {}
        values_rows.append(row_values)
        computed_rows.append(row_computed)
        if not isinstance(row, Mapping):
            result.errors.append(ItemIssue(section.id, index, "bad_value",
                                           f"{section.title}: row {index + 1} is not a row of "
                                           "values"))
            continue
        if all(_blank(row.get(item.id)) for item in order if not item.is_computed):
            continue
        entered += 1
        for key in row:
            if key not in own:
                result.errors.append(ItemIssue(str(key), index, "unknown_item",
                                               f"{key}: not an item of section "
                                               f"{section.title!r}"))
        row_env = dict(env)
        for item in order:
            _one(item, row.get(item.id), index, row_env, row_values, row_computed, result,
                 complete)
        for check, concerned in checks:
            _check(check, concerned, row_env, index, result, items)
    if section.max_rows is not None and entered > section.max_rows:
        result.errors.append(ItemIssue(section.id, None, "max_rows",
                                       f"{section.title}: {entered} rows entered; at most "
                                       f"{section.max_rows} are allowed"))


def _blank(raw: Any) -> bool:
    if raw is None:
        return True
    if isinstance(raw, str):
        return not raw.strip()
    if isinstance(raw, list | tuple):
        return all(_blank(p) for p in raw)
    return False


def _check(check: CheckDef, concerned: tuple[str, ...], env: dict[str, Any], row: int | None,
           result: FormResult, items: Mapping[str, ItemDef]) -> None:
    if check.expr.evaluate(env) is not False:
        return
    first = concerned[0]
    issue = ItemIssue(first, row, check.id, f"{items[first].label}: {check.message}",
                      tuple(concerned[1:]))
    (result.errors if check.severity == "hard" else result.warnings).append(issue)
