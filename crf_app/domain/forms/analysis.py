"""Whole-form rules and the evaluation plan.

Refuses duplicate ids, unknown codelists, references to unknown items or to another repeating
section's items, circular show_if/compute dependencies (naming the cycle) and type-inconsistent
expressions. Builds the plan `validate_form` follows: items in dependency order (form order
wherever dependencies allow), per repeating section, and the edit checks by scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crf_app.domain.forms.expressions import (
    BOOL,
    DATE,
    DATETIME,
    LIST,
    NUMBER,
    TEXT,
    TIME,
    ExpressionError,
)

if TYPE_CHECKING:
    from crf_app.domain.forms.schema import CheckDef, FormDef, ItemDef, SectionDef

EXPRESSION_TYPE = {
    "text": TEXT, "integer": NUMBER, "decimal": NUMBER, "date": DATE, "partial_date": TEXT,
    "time": TIME, "datetime": DATETIME, "choice": TEXT, "multi_choice": LIST, "yes_no": TEXT,
}
COMPUTE_FITS = {**{t: {e} for t, e in EXPRESSION_TYPE.items()}, "yes_no": {BOOL, TEXT}}


@dataclass(frozen=True)
class Plan:
    items: dict[str, ItemDef]
    section_of: dict[str, SectionDef]
    position: dict[str, int]  # item, section and check ids -> order on the form
    plain_order: tuple[ItemDef, ...]
    plain_checks: tuple[tuple[CheckDef, tuple[str, ...]], ...]
    # (section, items in evaluation order, row checks with the items they concern)
    repeating: tuple[tuple[SectionDef, tuple[ItemDef, ...],
                           tuple[tuple[CheckDef, tuple[str, ...]], ...]], ...]
    known_keys: frozenset[str]  # what a raw entry may contain: plain item and repeating ids
    dependents: dict[str, frozenset[str]]


def analyse(form: FormDef) -> tuple[list[str], Plan | None]:
    """(problems, plan): one line per problem, '<key path> (<id>): <field>: <rule>'."""
    problems: list[str] = []
    items: dict[str, ItemDef] = {}
    paths: dict[str, str] = {}
    section_of: dict[str, SectionDef] = {}
    position: dict[str, int] = {}
    sections_seen: dict[str, str] = {}
    for si, sec in enumerate(form.sections):
        spath = f"sections.{si} ({sec.id})"
        if sec.id in sections_seen:
            problems.append(f"{spath}: id: duplicate section id {sec.id!r} "
                            f"(first used at {sections_seen[sec.id]})")
        sections_seen.setdefault(sec.id, spath)
        position.setdefault(sec.id, len(position))
        for ii, item in enumerate(sec.items):
            path = f"{spath}.items.{ii} ({item.id})"
            if item.id in items:
                problems.append(f"{path}: id: duplicate item id {item.id!r} "
                                f"(first used at {paths[item.id]})")
                continue
            items[item.id], paths[item.id], section_of[item.id] = item, path, sec
            position[item.id] = len(position)

    for item_id, item in items.items():
        if isinstance(item.codelist, str):
            codes = form.codelists.get(item.codelist)
            if codes is None:
                known = ", ".join(sorted(form.codelists)) or "none"
                problems.append(f"{paths[item_id]}: codelist: codelist {item.codelist!r} does "
                                f"not exist (in codelists.yaml or this form; known: {known})")
            else:
                item._codes = tuple(codes)

    edges: dict[str, list[tuple[str, str]]] = {i: [] for i in items}
    for item_id, item in items.items():
        for kind, expr in (("show_if", item.show_if_expr), ("compute", item.compute_expr)):
            for ref in expr.references if expr else ():
                problem = _scope_problem(ref, section_of[item_id], items, section_of)
                if problem:
                    problems.append(f"{paths[item_id]}: {kind}: {problem}")
                else:
                    edges[item_id].append((ref, kind))
    if problems:
        return problems, None

    for cycle in _cycles(edges, list(items)):
        steps = ", ".join(f"{a}.{kind} uses {b}" for a, kind, b in cycle)
        names = " -> ".join([a for a, _, _ in cycle] + [cycle[0][0]])
        problems.append(f"{paths[cycle[0][0]]}: {cycle[0][1]}: circular show_if/compute "
                        f"dependency {names} ({steps})")
    if problems:
        return problems, None

    types = {i: EXPRESSION_TYPE[it.type] for i, it in items.items()}
    for item_id, item in items.items():
        problems.extend(f"{paths[item_id]}: {p}" for p in _type_problems(item, types))

    check_scopes, check_problems = _checks(form, items, section_of, types, position)
    problems.extend(check_problems)
    if problems:
        return problems, None

    order = _dependency_order(list(items), edges)
    plain = tuple(items[i] for i in order if not section_of[i].repeating)
    repeating = tuple(
        (sec, tuple(items[i] for i in order if section_of[i] is sec),
         tuple((c, its) for c, its, scope in check_scopes if scope == sec.id))
        for sec in form.sections if sec.repeating)
    plain_checks = tuple((c, its) for c, its, scope in check_scopes if scope is None)
    known = frozenset([i.id for i in plain] + [s.id for s in form.sections if s.repeating])
    return [], Plan(items, section_of, position, plain, plain_checks, repeating, known,
                    _dependents(edges))


def _scope_problem(ref: str, own: SectionDef, items: dict[str, ItemDef],
                   section_of: dict[str, SectionDef]) -> str | None:
    if ref not in items:
        return f"refers to unknown item {ref!r}"
    sec = section_of[ref]
    if sec.repeating and sec is not own:
        return (f"refers to {ref!r}, an item of repeating section {sec.id!r}; only items of "
                "that section can refer to it")
    return None


def _type_problems(item: ItemDef, types: dict[str, str]) -> list[str]:
    out = []
    if item.show_if_expr is not None:
        try:
            t = item.show_if_expr.result_type(types)
            if t != BOOL:
                out.append(f"show_if: must be a condition (e.g. SEX == \"F\"), not a {t}")
        except ExpressionError as exc:
            out.append(f"show_if: {exc}")
    if item.compute_expr is not None:
        try:
            t = item.compute_expr.result_type(types)
            if t not in COMPUTE_FITS[item.type]:
                out.append(f"compute: gives a {t}, which does not fit a {item.type} item")
        except ExpressionError as exc:
            out.append(f"compute: {exc}")
    return out


def _checks(form: FormDef, items: dict[str, ItemDef], section_of: dict[str, SectionDef],
            types: dict[str, str], position: dict[str, int]
            ) -> tuple[list[tuple[CheckDef, tuple[str, ...], str | None]], list[str]]:
    problems: list[str] = []
    scoped: list[tuple[CheckDef, tuple[str, ...], str | None]] = []
    seen: set[str] = set()
    for ci, check in enumerate(form.checks):
        path = f"checks.{ci} ({check.id})"
        before = len(problems)
        if check.id in seen or check.id in items:
            problems.append(f"{path}: id: duplicate check id {check.id!r} (ids of checks and "
                            "items must be unique)")
        seen.add(check.id)
        for ref in check.expr.references:
            if ref not in items:
                problems.append(f"{path}: expression: refers to unknown item {ref!r}")
        for name in check.items:
            if name not in items:
                problems.append(f"{path}: items: unknown item {name!r}")
        if len(problems) > before:
            continue
        concerned = tuple(check.items) or check.expr.references
        if not concerned:
            problems.append(f"{path}: expression: a check must refer to at least one item")
            continue
        scopes = {section_of[i].id for i in (*concerned, *check.expr.references)
                  if section_of[i].repeating}
        if len(scopes) > 1:
            problems.append(f"{path}: expression: mixes items of repeating sections "
                            f"{', '.join(sorted(scopes))}")
            continue
        try:
            t = check.expr.result_type(types)
            if t != BOOL:
                problems.append(f"{path}: expression: must be a condition, not a {t}")
        except ExpressionError as exc:
            problems.append(f"{path}: expression: {exc}")
        scoped.append((check, concerned, next(iter(scopes), None)))
        position.setdefault(check.id, position[concerned[0]])
    return scoped, problems


def _cycles(edges: dict[str, list[tuple[str, str]]], nodes: list[str]
            ) -> list[list[tuple[str, str, str]]]:
    """Each distinct cycle once, as steps (item, show_if|compute, item it uses)."""
    state = dict.fromkeys(nodes, 0)  # 0 new, 1 on the path, 2 done
    found: list[list[tuple[str, str, str]]] = []
    seen_sets: set[frozenset[str]] = set()
    for start in nodes:
        if state[start]:
            continue
        path: list[tuple[str, str, str]] = []  # steps taken to reach the current node
        stack = [(start, iter(edges[start]))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            step = next(it, None)
            if step is None:
                state[node] = 2
                stack.pop()
                if path:
                    path.pop()
                continue
            dep, kind = step
            if state[dep] == 1:
                nodes_on_path = [*(s[0] for s in path), node]
                cycle_steps = [*path[nodes_on_path.index(dep):], (node, kind, dep)]
                key = frozenset(s[0] for s in cycle_steps)
                if key not in seen_sets:
                    seen_sets.add(key)
                    found.append(cycle_steps)
            elif state[dep] == 0:
                state[dep] = 1
                path.append((node, kind, dep))
                stack.append((dep, iter(edges[dep])))
    return found


def _dependency_order(nodes: list[str], edges: dict[str, list[tuple[str, str]]]) -> list[str]:
    """Every item after the items it uses, otherwise in form order (edges are acyclic)."""
    done: set[str] = set()
    order: list[str] = []
    for start in nodes:
        if start in done:
            continue
        stack = [(start, iter(edges[start]))]
        while stack:
            node, it = stack[-1]
            step = next(it, None)
            if step is None:
                stack.pop()
                if node not in done:
                    done.add(node)
                    order.append(node)
            elif step[0] not in done:
                stack.append((step[0], iter(edges[step[0]])))
    return order


def _dependents(edges: dict[str, list[tuple[str, str]]]) -> dict[str, frozenset[str]]:
    users: dict[str, set[str]] = {}
    for item, deps in edges.items():
        for dep, _ in deps:
            users.setdefault(dep, set()).add(item)
    out: dict[str, frozenset[str]] = {}
    for item in users:
        seen: set[str] = set()
        todo = [item]
        while todo:
            for user in users.get(todo.pop(), ()):
                if user not in seen:
                    seen.add(user)
                    todo.append(user)
        out[item] = frozenset(seen)
    return out
