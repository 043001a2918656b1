"""Reading a file's metadata for a new study: the definitions indexed by OID, what the clinical
data need from the metadata (a first pass over them), and ODM ItemDefs -> crf-app items.

Other systems' definitions are mapped as closely as crf-app allows; what does not fit (a code
list with codes crf-app cannot store, a range check that is an expression…) is noted in the
report, never silently dropped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree
from pydantic import ValidationError

from crf_app import odm as oe
from crf_app.domain.forms import ItemDef
from crf_app.odm.mapping import clean
from crf_app.odm.reader import Handler, Header, child, children, q, translated
from crf_app.odm.report import ImportRefused, ImportReport

IMPORTED = "IMPORTED"
_CODE_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def code_of(raw: str, limit: int = 40) -> str:
    """A protocol code (study, site, visit, arm): letters, digits, '_' and '-'."""
    code = _CODE_CHARS.sub("-", raw.strip()).strip("-") or "X"
    return code[:limit]


def ident(raw: str, *, upper: bool, limit: int) -> str:
    text = re.sub(r"[^A-Za-z0-9_]+", "_", raw.strip()).strip("_")
    text = text.upper() if upper else text.lower()
    if not text or not text[0].isalpha():
        text = ("I_" if upper else "x_") + text
    return text[:limit]


def unique(candidate: str, used: set[str], limit: int) -> str:
    out, n = candidate, 2
    while out in used:
        suffix = f"_{n}"
        out = candidate[:limit - len(suffix)] + suffix
        n += 1
    used.add(out)
    return out


@dataclass
class Scan:
    """What the first pass over the clinical data learns (the metadata needs it)."""

    subjects: int = 0
    repeats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    decimals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lowest: dict[str, float] = field(default_factory=dict)
    highest: dict[str, float] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    locations: set[str] = field(default_factory=set)
    clinical_studies: set[str] = field(default_factory=set)
    unsited: int = 0


class ScanHandler(Handler):
    def __init__(self) -> None:
        self.scan = Scan()
        self.header_info: Header | None = None
        self.studies: list[etree._Element] = []
        self.admins: list[etree._Element] = []

    def header(self, h: Header) -> None:
        self.header_info = h

    def metadata(self, studies: list[etree._Element], admins: list[etree._Element]) -> None:
        self.studies, self.admins = list(studies), list(admins)

    def clinical(self, study_oid: str, mdv_oid: str) -> None:
        self.scan.clinical_studies.add(study_oid)

    def subject(self, el: etree._Element) -> None:
        sc = self.scan
        sc.subjects += 1
        site_ref = child(el, "SiteRef")
        if site_ref is not None:
            sc.locations.add(site_ref.get("LocationOID", ""))
        else:
            sc.unsited += 1
        for se in children(el, "StudyEventData"):
            key = se.get("StudyEventRepeatKey") or "1"
            oid = se.get("StudyEventOID", "")
            if key.isdigit():
                sc.repeats[oid] = max(sc.repeats[oid], int(key))
            for idata in se.iter(q("ItemData")):
                value = (idata.get("Value") or "").strip()
                oid = idata.get("ItemOID", "")
                sc.lengths[oid] = max(sc.lengths[oid], len(value))
                if re.fullmatch(r"[+-]?\d*\.\d+", value):
                    sc.decimals[oid] = max(sc.decimals[oid], len(value.split(".")[1]))
                if re.fullmatch(r"[+-]?\d+(\.\d*)?|[+-]?\.\d+", value):
                    number = float(value)
                    sc.lowest[oid] = min(sc.lowest.get(oid, number), number)
                    sc.highest[oid] = max(sc.highest.get(oid, number), number)


@dataclass
class Defs:
    """The definitions of one MetaDataVersion (with those it includes), indexed by OID."""

    events: dict[str, etree._Element] = field(default_factory=dict)
    forms: dict[str, etree._Element] = field(default_factory=dict)
    groups: dict[str, etree._Element] = field(default_factory=dict)
    items: dict[str, etree._Element] = field(default_factory=dict)
    codelists: dict[str, etree._Element] = field(default_factory=dict)
    methods: dict[str, etree._Element] = field(default_factory=dict)
    conditions: dict[str, etree._Element] = field(default_factory=dict)
    event_order: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)


def index_defs(studies: list[etree._Element], study: etree._Element,
                mdv: etree._Element, depth: int = 0) -> Defs:
    defs = Defs()
    include = child(mdv, "Include")
    if include is not None and depth < 5:
        for st in studies:
            if st.get("OID") == include.get("StudyOID"):
                for other in children(st, "MetaDataVersion"):
                    if other.get("OID") == include.get("MetaDataVersionOID"):
                        defs = index_defs(studies, st, other, depth + 1)
    bd = child(study, "BasicDefinitions")
    for mu in children(bd, "MeasurementUnit") if bd is not None else []:
        defs.units[mu.get("OID", "")] = translated(mu, "Symbol") or mu.get("Name", "")
    for tag, target in (("StudyEventDef", defs.events), ("FormDef", defs.forms),
                        ("ItemGroupDef", defs.groups), ("ItemDef", defs.items),
                        ("CodeList", defs.codelists), ("MethodDef", defs.methods),
                        ("ConditionDef", defs.conditions)):
        for el in children(mdv, tag):
            target[el.get("OID", "")] = el
    protocol = child(mdv, "Protocol")
    if protocol is not None:
        refs = children(protocol, "StudyEventRef")
        refs.sort(key=lambda r: int(r.get("OrderNumber", "0") or 0)
                  if (r.get("OrderNumber") or "0").isdigit() else 0)
        defs.event_order = [r.get("StudyEventOID", "") for r in refs]
    if not defs.event_order:
        defs.event_order = list(defs.events)
    return defs


def alias(el: etree._Element, context: str) -> str | None:
    for a in children(el, "Alias"):
        if a.get("Context") == context:
            return a.get("Name")
    return None


def crfapp_expression(defs: dict[str, etree._Element], oid: str | None) -> str | None:
    el = defs.get(oid or "")
    if el is None:
        return None
    for fe in children(el, "FormalExpression"):
        if fe.get("Context") == oe.EXPRESSION_CONTEXT and fe.text:
            return fe.text.strip()
    return None




class ItemBuilder:
    """ODM metadata -> crf-app items (types, code lists, units, limits, computations)."""

    def __init__(self, path: Path, header: Header, studies: list[etree._Element],
                 admins: list[etree._Element], scan: Scan, report: ImportReport):
        self.path, self.h, self.studies, self.admins = path, header, studies, admins
        self.scan, self.report = scan, report
        self.dialect = header.source_system == oe.SOURCE_SYSTEM
        if not studies:
            raise ImportRefused(f"{path.name} has no Study element (no metadata): a new study "
                                "cannot be created from it; nothing was imported")
        self.main = self._main_study()
        mdvs = children(self.main, "MetaDataVersion")
        if not mdvs:
            raise ImportRefused(f"{path.name}: study {self.main.get('OID')} has no "
                                "MetaDataVersion (no forms); nothing was imported")
        self.mdv = mdvs[-1]
        self.defs = index_defs(studies, self.main, self.mdv)
        self.note = report.notes.append

    def _main_study(self) -> etree._Element:
        included = {inc.get("StudyOID") for st in self.studies
                    for mdv in children(st, "MetaDataVersion")
                    for inc in children(mdv, "Include")}
        for st in self.studies:
            if st.get("OID") in included:
                return st
        return self.studies[0]

    # -- items --
    def _codes(self, cl: etree._Element) -> list[dict[str, str]] | None:
        codes = []
        for cli in children(cl, "CodeListItem") + children(cl, "EnumeratedItem"):
            code = (cli.get("CodedValue") or "").strip()
            if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,40}", code):
                return None
            label = clean(translated(cli, "Decode")) or code
            codes.append({"code": code, "label": label[:300]})
        if not codes or len({c["code"] for c in codes}) != len(codes):
            return None
        return codes

    def _item(self, form_id: str, idef: etree._Element, iref: etree._Element,
              used: set[str]) -> tuple[ItemDef, bool] | None:
        oid = idef.get("OID", "")
        name = idef.get("Name") or oid
        where = f"{form_id}: item {oid}"
        if self.dialect and re.fullmatch(r"[A-Z][A-Z0-9_]{0,31}", name) and name not in used:
            item_id = name
            used.add(name)
        else:
            base = ident(name, upper=True, limit=32)
            item_id = unique(base, used, 32)
        label = self._text(translated(idef, "Question")) or clean(idef.get("Comment", "")) \
            or name
        help_text = self._text(translated(idef, "Description"))
        if len(label) > 200:
            help_text = (label + (" — " + help_text if help_text else ""))
            label = label[:199] + "…"
        kw: dict[str, Any] = {"id": item_id, "label": label, "help": help_text,
                              "required": iref.get("Mandatory") == "Yes"}
        dtype = idef.get("DataType", "text")
        booleans = False
        ref = child(idef, "CodeListRef")
        cl = self.defs.codelists.get(ref.get("CodeListOID", "")) if ref is not None else None
        if self.dialect and ref is not None and ref.get("CodeListOID") == "CL.YES_NO":
            kw["type"] = "yes_no"
        elif dtype == "boolean":
            kw["type"] = "yes_no"
            booleans = True
            self._type_note("boolean items became yes/no items (1/true → Y, 0/false → N)")
        elif cl is not None and (codes := self._codes(cl)) is not None:
            kw["type"] = "multi_choice" if (self.dialect and dtype == "string") else "choice"
            kw["codelist"] = codes
        else:
            if cl is not None:
                self.note(f"{where}: code list {cl.get('OID')} has codes crf-app cannot store "
                          "(spaces or other characters, or duplicates); the item is kept as "
                          f"{'text' if dtype in ('text', 'string') else dtype}")
            kw.update(self._base_type(dtype, idef, where))
        self._numeric_extras(kw, idef, where)
        if self.dialect:
            compute = crfapp_expression(self.defs.methods, iref.get("MethodOID"))
            if compute:
                kw["compute"] = compute
                kw["required"] = False
            cond = crfapp_expression(self.defs.conditions,
                                      iref.get("CollectionExceptionConditionOID"))
            if cond and cond.startswith("not (") and cond.endswith(")"):
                kw["show_if"] = cond[5:-1]
        else:
            for attr, what in (("MethodOID", "computation method"),
                               ("CollectionExceptionConditionOID", "skip condition")):
                if iref.get(attr):
                    self.note(f"{where}: {what} {iref.get(attr)} not imported (its "
                              "expression language is not crf-app's); values are imported as "
                              "they are")
        return self._validated(kw, where, booleans)

    def _text(self, text: str) -> str:
        """Labels and help: crf-app's own files verbatim, others without HTML markup."""
        return text.strip() if self.dialect else clean(text)

    def _type_note(self, text: str) -> None:
        if text not in self.report.notes:
            self.note(text)

    def _base_type(self, dtype: str, idef: etree._Element, where: str) -> dict[str, Any]:
        oid = idef.get("OID", "")
        simple = {"integer": "integer", "date": "date", "partialDate": "partial_date",
                  "time": "time", "datetime": "datetime"}
        if dtype in simple:
            return {"type": simple[dtype]}
        if dtype in ("float", "double"):
            sd = idef.get("SignificantDigits")
            declared = int(sd) if sd and sd.isdigit() else None
            seen = self.scan.decimals.get(oid, 0)
            precision = max(declared or 0, seen)
            if declared is None and not seen:
                precision = 2
                self.note(f"{where}: no SignificantDigits and no data: 2 decimals assumed")
            elif declared is not None and seen > declared:
                self.note(f"{where}: the data have {seen} decimals, more than the "
                          f"SignificantDigits {declared}: precision raised to {min(seen, 6)}")
            if precision > 6:
                self.note(f"{where}: more than 6 decimals: values are refused beyond 6")
            return {"type": "decimal", "precision": min(precision, 6)}
        if dtype not in ("text", "string"):
            self._type_note(f"items of ODM type {dtype} are imported as text")
        length = idef.get("Length")
        limit = int(length) if length and length.isdigit() else 200
        limit = max(limit, self.scan.lengths.get(oid, 0), 1)
        if limit > 4000:
            self.note(f"{where}: text longer than 4000 characters is refused (Length {limit})")
        return {"type": "text", "max_length": min(limit, 4000)}

    def _numeric_extras(self, kw: dict[str, Any], idef: etree._Element, where: str) -> None:
        ref = child(idef, "MeasurementUnitRef")
        if ref is not None:
            unit = self.defs.units.get(ref.get("MeasurementUnitOID", ""), "")
            if kw["type"] in ("integer", "decimal") and unit:
                kw["unit"] = unit[:30]
            else:
                self.note(f"{where}: unit {unit or ref.get('MeasurementUnitOID')!r} dropped "
                          f"(crf-app keeps units on numbers only, not on a {kw['type']} item)")
        checks = children(idef, "RangeCheck")
        if not checks:
            return
        if kw["type"] not in ("integer", "decimal"):
            self.note(f"{where}: {len(checks)} range checks on a {kw['type']} item not "
                      "imported")
            return
        limits: dict[str, dict[str, float]] = {}
        for rc in checks:
            comp, values = rc.get("Comparator"), children(rc, "CheckValue")
            kind = "soft" if rc.get("SoftHard") == "Soft" else "hard"
            try:
                value = float((values[0].text or "").strip()) if len(values) == 1 else None
            except ValueError:
                value = None
            if comp not in ("GE", "GT", "LE", "LT") or value is None or \
                    child(rc, "FormalExpression") is not None:
                self.note(f"{where}: range check {comp or 'expression'} not imported (only "
                          "GE/GT/LE/LT with one value map onto limits)")
                continue
            if comp in ("GT", "LT"):
                if kw["type"] == "integer":
                    value += 1 if comp == "GT" else -1
                else:
                    self.note(f"{where}: range check {comp} {value:g} imported as "
                              f"{'≥' if comp == 'GT' else '≤'} (crf-app limits include the "
                              "bound)")
            end = "min" if comp in ("GE", "GT") else "max"
            limits.setdefault(kind, {})[end] = value
        oid = idef.get("OID", "")
        hard = limits.get("hard", {})
        low, high = self.scan.lowest.get(oid), self.scan.highest.get(oid)
        if (low is not None and "min" in hard and low < hard["min"]) or \
                (high is not None and "max" in hard and high > hard["max"]):
            self.note(f"{where}: the data hold values outside its hard limits "
                      f"({low:g}–{high:g}): the limits were imported as soft limits")
            soft = limits.setdefault("soft", {})
            for end, value in hard.items():
                soft.setdefault(end, value)
            limits.pop("hard")
        for kind, lim in limits.items():
            kw[kind] = lim
        flag = alias(idef, "crf-app:soft_flag") if self.dialect else None
        if flag and "soft" in kw:
            kw["soft"]["flag"] = flag

    def _validated(self, kw: dict[str, Any], where: str, booleans: bool
                   ) -> tuple[ItemDef, bool] | None:
        attempts = [dict(kw)]
        for drop in (("soft",), ("hard",), ("unit",), ("compute", "show_if")):
            if any(k in attempts[-1] for k in drop):
                nxt = {k: v for k, v in attempts[-1].items() if k not in drop}
                attempts.append(nxt)
        attempts.append({"id": kw["id"], "label": kw["label"], "help": kw.get("help", ""),
                         "type": "text", "max_length": 4000})
        first_error = ""
        for i, attempt in enumerate(attempts):
            try:
                item = ItemDef.model_validate(attempt)
            except ValidationError as exc:
                first_error = first_error or "; ".join(
                    e["msg"].removeprefix("Value error, ") for e in exc.errors())
                continue
            if i:
                dropped = sorted(set(kw) - set(attempt))
                self.note(f"{where}: {', '.join(dropped) or 'type'} dropped "
                          f"({first_error})" + (" — kept as text" if attempt["type"] == "text"
                                                and kw["type"] != "text" else ""))
            return item, booleans and item.type == "yes_no"
        self.note(f"{where}: not importable ({first_error})")
        return None

    # -- forms --
