"""The data dictionary: one row per item of every form, as dicts, CSV or Markdown."""

from __future__ import annotations

import csv
import io
from typing import Any

from crf_app.domain.forms.library import FormLibrary
from crf_app.domain.forms.schema import FormDef, ItemDef
from crf_app.domain.forms.types import format_limit

COLUMNS = ("form", "form_version", "section", "item", "label", "type", "unit", "precision",
           "max_length", "hard_min", "hard_max", "soft_min", "soft_max", "soft_flag",
           "required", "codelist", "codes", "show_if", "compute")


def _limit(item: ItemDef, index: int) -> str:
    value = item.bounds[index]
    return "" if value is None else format_limit(item, value)


def _row(form: FormDef, section: str, item: ItemDef) -> dict[str, Any]:
    return {
        "form": form.id,
        "form_version": form.version,
        "section": section,
        "item": item.id,
        "label": item.label,
        "type": item.type,
        "unit": item.unit or "",
        "precision": "" if item.precision is None else item.precision,
        "max_length": item.text_limit if item.type == "text" else "",
        "hard_min": _limit(item, 0),
        "hard_max": _limit(item, 1),
        "soft_min": _limit(item, 2),
        "soft_max": _limit(item, 3),
        "soft_flag": (item.soft.flag or "") if item.soft else "",
        "required": "Y" if item.required else "N",
        "codelist": item.codelist if isinstance(item.codelist, str) else "",
        "codes": "; ".join(f"{c.code}={c.label}" for c in item.codes),
        "show_if": item.show_if or "",
        "compute": item.compute or "",
    }


def data_dictionary_rows(lib: FormLibrary) -> list[dict[str, Any]]:
    """One dict per item (keys: COLUMNS), forms in id order, items in form order."""
    return [_row(form, section.id + (" (repeating)" if section.repeating else ""), item)
            for _, form in sorted(lib.forms.items())
            for section in form.sections for item in section.items]


def dictionary_csv(lib: FormLibrary) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(data_dictionary_rows(lib))
    return out.getvalue()


def _md(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text.replace("*", "\\*").replace("_", "\\_") if text else ""


def dictionary_markdown(lib: FormLibrary) -> str:
    """A Markdown document: a heading and a table per form, then each form's edit checks."""
    rows = data_dictionary_rows(lib)
    shown = ("section", "item", "label", "type", "unit", "hard", "soft", "required", "codes",
             "show_if", "compute")
    lines = ["# Data dictionary", ""]
    for form_id, form in sorted(lib.forms.items()):
        lines += [f"## {_md(form.title)} (`{form_id}`, version {form.version})", "",
                  f"Fingerprint: `{form.fingerprint()[:16]}`", "",
                  "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
        for row in rows:
            if row["form"] != form_id:
                continue
            cells = dict(row)
            cells["hard"] = _range(row["hard_min"], row["hard_max"])
            cells["soft"] = _range(row["soft_min"], row["soft_max"]) + (
                f" ({row['soft_flag']})" if row["soft_flag"] else "")
            lines.append("| " + " | ".join(_md(cells[c]) for c in shown) + " |")
        if form.checks:
            lines += ["", "Edit checks:", ""]
            lines += [f"- `{c.id}` ({c.severity}): {_md(c.message)} — `{c.expression}`"
                      for c in form.checks]
        lines.append("")
    return "\n".join(lines)


def _range(lo: str, hi: str) -> str:
    if lo and hi:
        return f"{lo}–{hi}"
    if hi:
        return f"≤ {hi}"
    return f"≥ {lo}" if lo else ""
