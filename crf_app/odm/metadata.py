"""The metadata of an ODM file, built as trees (they are small): Study (GlobalVariables,
BasicDefinitions, MetaDataVersion) and AdminData (users, sites, SignatureDefs)."""

from __future__ import annotations

from typing import Any

from lxml import etree

from crf_app.domain.forms import FormDef, ItemDef
from crf_app.domain.forms.types import format_limit
from crf_app.domain.subjects import SEXES, SubjectStatus
from crf_app.odm.records import ExportPlan
from crf_app.odm.scheme import (
    AE_FORM_OID,
    ALIAS_DAY,
    ALIAS_FORM_VERSION,
    ALIAS_WINDOW,
    DOSE_FORM_OID,
    EXPRESSION_CONTEXT,
    FLAG_QUERY,
    FLAG_STATUS,
    FLAG_TYPE_CODELIST,
    FORM_STATUS_CODELIST,
    FORM_STATUSES,
    GENERIC_SIGNATURE_OID,
    LOG_CODELISTS,
    LOGS,
    ODM_NS,
    QUERY_STATE_CODELIST,
    QUERY_STATES,
    SIGNATURE_FIELDS,
    SIGNATURE_FORM_OID,
    SIGNATURE_GROUP_OID,
    SUBJECT_EVENT_OID,
    SUBJECT_FIELDS,
    SUBJECT_FORM_OID,
    SUBJECT_GROUP_OID,
    VISIT_FIELDS,
    VISIT_FORM_OID,
    VISIT_GROUP_OID,
    LogField,
    RecordField,
    event_oid,
    form_oid,
    group_oid,
    item_oid,
    mdv_oid,
    signature_oids,
    site_oid,
    user_oid,
)

NS = ODM_NS
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _el(tag: str, attrib: dict[str, Any] | None = None, text: str | None = None,
        nsmap: bool = False) -> etree._Element:
    el = etree.Element(_q(tag), {k: str(v) for k, v in (attrib or {}).items() if v is not None},
                       nsmap={None: NS} if nsmap else None)
    if text is not None:
        el.text = text
    return el


def _sub(parent: etree._Element, tag: str, attrib: dict[str, Any] | None = None,
         text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, _q(tag),
                          {k: str(v) for k, v in (attrib or {}).items() if v is not None})
    if text is not None:
        el.text = text
    return el


def _translated(parent: etree._Element, tag: str, text: str) -> etree._Element:
    wrapper = _sub(parent, tag)
    _sub(wrapper, "TranslatedText", {XML_LANG: "en"}, text)
    return wrapper


# --- metadata -----------------------------------------------------------------------------------
class _Meta:
    """OIDs of codelists and units for one export, computed once from the form library."""

    def __init__(self, plan: ExportPlan):
        self.plan = plan
        lib = plan.library
        self.forms: list[FormDef] = list(lib.forms.values())
        self.units: dict[str, str] = {}
        for form in self.forms:
            for item in form.items:
                if item.unit and item.unit not in self.units:
                    self.units[item.unit] = self._unit_oid(item.unit)
        shared: dict[str, tuple] = {}
        clash: set[str] = set()
        for form in self.forms:
            for item in form.items:
                if isinstance(item.codelist, str):
                    codes = tuple((c.code, c.label) for c in item.codes)
                    if shared.setdefault(item.codelist, codes) != codes:
                        clash.add(item.codelist)
        self.codelist_of: dict[tuple[str, str], str] = {}
        self.codelists: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        for form in self.forms:
            for item in form.items:
                if not item.codes:
                    continue
                if item.type == "yes_no":
                    oid, name = "CL.YES_NO", "YES_NO"
                elif isinstance(item.codelist, str) and item.codelist not in clash:
                    oid, name = f"CL.{item.codelist}", item.codelist
                else:
                    oid, name = f"CL.{form.id}.{item.id}", f"{form.id}.{item.id}"
                self.codelist_of[(form.id, item.id)] = oid
                self.codelists.setdefault(oid, (name, [(c.code, c.label) for c in item.codes]))

    def _unit_oid(self, unit: str) -> str:
        slug = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in unit).strip("_")
        oid = f"MU.{slug or 'UNIT'}"
        n = 2
        while oid in self.units.values():
            oid = f"MU.{slug or 'UNIT'}_{n}"
            n += 1
        return oid


def study_element(plan: ExportPlan) -> etree._Element:
    """<Study>: GlobalVariables, BasicDefinitions and the MetaDataVersion."""
    meta = _Meta(plan)
    protocol = plan.protocol
    study = _el("Study", {"OID": plan.study_oid}, nsmap=True)
    gv = _sub(study, "GlobalVariables")
    _sub(gv, "StudyName", text=plan.title)
    _sub(gv, "StudyDescription", text=f"{plan.title}. Protocol {protocol.protocol_number} "
                                      f"version {protocol.protocol_version}"
                                      + (f"; sponsor {protocol.sponsor}" if protocol.sponsor
                                         else "") + ".")
    _sub(gv, "ProtocolName", text=protocol.protocol_number)
    if meta.units:
        bd = _sub(study, "BasicDefinitions")
        for unit, oid in meta.units.items():
            mu = _sub(bd, "MeasurementUnit", {"OID": oid, "Name": unit})
            _translated(mu, "Symbol", unit)
    mdv = _sub(study, "MetaDataVersion", {
        "OID": mdv_oid(plan.metadata_version),
        "Name": f"Metadata version {plan.metadata_version}",
        "Description": f"Protocol {protocol.protocol_version}"})
    _protocol(mdv, plan)
    methods: list[etree._Element] = []
    conditions: list[etree._Element] = []
    for form in meta.forms:
        _form_def(mdv, form)
    _record_form_defs(mdv)
    for form in meta.forms:
        for section in form.sections:
            _group_def(mdv, form, section, methods, conditions)
    _record_group_defs(mdv)
    for form in meta.forms:
        for item in form.items:
            _item_def(mdv, meta, form, item)
    _record_item_defs(mdv)
    for oid, (name, codes) in meta.codelists.items():
        _codelist(mdv, oid, name, codes)
    _record_codelists(mdv, plan)
    for el in conditions + methods:
        mdv.append(el)
    return study


def _protocol(mdv: etree._Element, plan: ExportPlan) -> None:
    protocol = plan.protocol
    prot = _sub(mdv, "Protocol")
    _translated(prot, "Description", f"{protocol.title} ({protocol.protocol_number} "
                                     f"v{protocol.protocol_version})")
    _sub(prot, "StudyEventRef", {"StudyEventOID": SUBJECT_EVENT_OID, "OrderNumber": 1,
                                 "Mandatory": "Yes"})
    for i, v in enumerate(protocol.visits, start=2):
        _sub(prot, "StudyEventRef", {"StudyEventOID": event_oid(v.code), "OrderNumber": i,
                                     "Mandatory": "Yes"})
    se = _sub(mdv, "StudyEventDef", {"OID": SUBJECT_EVENT_OID, "Name": "Subject record",
                                     "Repeating": "No", "Type": "Common"})
    _sub(se, "FormRef", {"FormOID": SUBJECT_FORM_OID, "OrderNumber": 1, "Mandatory": "Yes"})
    for i, oid in enumerate((AE_FORM_OID, DOSE_FORM_OID, SIGNATURE_FORM_OID), start=2):
        _sub(se, "FormRef", {"FormOID": oid, "OrderNumber": i, "Mandatory": "No"})
    for v in protocol.visits:
        se = _sub(mdv, "StudyEventDef", {"OID": event_oid(v.code), "Name": v.name,
                                         "Repeating": "No", "Type": "Scheduled"})
        _sub(se, "FormRef", {"FormOID": VISIT_FORM_OID, "OrderNumber": 1,
                             "Mandatory": "Yes"})
        for j, form_id in enumerate(v.forms, start=2):
            _sub(se, "FormRef", {"FormOID": form_oid(form_id), "OrderNumber": j,
                                 "Mandatory": "No"})
        _sub(se, "Alias", {"Context": ALIAS_DAY, "Name": str(v.day)})
        _sub(se, "Alias", {"Context": ALIAS_WINDOW,
                           "Name": f"-{v.window.before}/+{v.window.after}"})


def _form_def(mdv: etree._Element, form: FormDef) -> None:
    fd = _sub(mdv, "FormDef", {"OID": form_oid(form.id), "Name": form.title,
                               "Repeating": "No"})
    if form.description:
        _translated(fd, "Description", form.description)
    for i, section in enumerate(form.sections, start=1):
        _sub(fd, "ItemGroupRef", {"ItemGroupOID": group_oid(form.id, section.id),
                                  "OrderNumber": i, "Mandatory": "No"})
    _sub(fd, "Alias", {"Context": ALIAS_FORM_VERSION, "Name": str(form.version)})


def _group_def(mdv: etree._Element, form: FormDef, section: Any,
               methods: list[etree._Element], conditions: list[etree._Element]) -> None:
    ig = _sub(mdv, "ItemGroupDef", {"OID": group_oid(form.id, section.id),
                                    "Name": section.title,
                                    "Repeating": "Yes" if section.repeating else "No"})
    if section.help:
        _translated(ig, "Description", section.help)
    for i, item in enumerate(section.items, start=1):
        attrs: dict[str, Any] = {"ItemOID": item_oid(form.id, item.id), "OrderNumber": i,
                                 "Mandatory": "Yes" if item.required else "No"}
        if item.compute:
            oid = f"MT.{form.id}.{item.id}"
            attrs["MethodOID"] = oid
            method = _el("MethodDef", {"OID": oid, "Name": f"Compute {item.id}",
                                       "Type": "Computation"})
            _translated(method, "Description", f"{item.label} = {item.compute}")
            _sub(method, "FormalExpression", {"Context": EXPRESSION_CONTEXT}, item.compute)
            methods.append(method)
        if item.show_if:
            oid = f"CD.{form.id}.{item.id}"
            attrs["CollectionExceptionConditionOID"] = oid
            cond = _el("ConditionDef", {"OID": oid, "Name": f"Skip {item.id}"})
            _translated(cond, "Description", f"{item.label} is collected only when "
                                             f"{item.show_if}")
            _sub(cond, "FormalExpression", {"Context": EXPRESSION_CONTEXT},
                 f"not ({item.show_if})")
            conditions.append(cond)
        _sub(ig, "ItemRef", attrs)
    if section.max_rows:
        _sub(ig, "Alias", {"Context": "crf-app:max_rows", "Name": str(section.max_rows)})


ODM_TYPES = {"integer": "integer", "decimal": "float", "date": "date",
             "partial_date": "partialDate", "time": "time", "datetime": "datetime",
             "text": "text", "choice": "text", "yes_no": "text", "multi_choice": "string"}


def _item_def(mdv: etree._Element, meta: _Meta, form: FormDef, item: ItemDef) -> None:
    attrs: dict[str, Any] = {"OID": item_oid(form.id, item.id), "Name": item.id,
                             "DataType": ODM_TYPES[item.type]}
    if item.type == "text":
        attrs["Length"] = item.text_limit
    elif item.codes:
        attrs["Length"] = max(len(c.code) for c in item.codes) if item.type != "multi_choice" \
            else sum(len(c.code) + 1 for c in item.codes)
    if item.type == "decimal":
        attrs["SignificantDigits"] = item.precision or 0
    if item.type == "multi_choice":
        attrs["Comment"] = "Several codes of the code list, separated by '|'"
    idef = _sub(mdv, "ItemDef", attrs)
    if item.help:
        _translated(idef, "Description", item.help)
    _translated(idef, "Question", item.label)
    if item.unit:
        _sub(idef, "MeasurementUnitRef", {"MeasurementUnitOID": meta.units[item.unit]})
    hmin, hmax, smin, smax = item.bounds
    for bound, comparator, soft_hard, what in ((hmin, "GE", "Hard", "below the minimum"),
                                               (hmax, "LE", "Hard", "above the maximum"),
                                               (smin, "GE", "Soft", "below the expected"),
                                               (smax, "LE", "Soft", "above the expected")):
        if bound is None:
            continue
        shown = format_limit(item, bound)
        rc = _sub(idef, "RangeCheck", {"Comparator": comparator, "SoftHard": soft_hard})
        _sub(rc, "CheckValue", text=shown)
        flag = f" ({item.soft.flag})" if soft_hard == "Soft" and item.soft and item.soft.flag \
            else ""
        _translated(rc, "ErrorMessage", f"{item.label} is {what} {shown}"
                                        f"{' ' + item.unit if item.unit else ''}{flag}")
    if item.codes:
        _sub(idef, "CodeListRef", {"CodeListOID": meta.codelist_of[(form.id, item.id)]})
    if item.soft and item.soft.flag:
        _sub(idef, "Alias", {"Context": "crf-app:soft_flag", "Name": item.soft.flag})


def _codelist(mdv: etree._Element, oid: str, name: str, codes: list[tuple[str, str]],
              data_type: str = "text") -> None:
    cl = _sub(mdv, "CodeList", {"OID": oid, "Name": name, "DataType": data_type})
    for i, (code, label) in enumerate(codes, start=1):
        cli = _sub(cl, "CodeListItem", {"CodedValue": code, "OrderNumber": i})
        _translated(cli, "Decode", label)


def _record_form_defs(mdv: etree._Element) -> None:
    for oid, name, group in ((SUBJECT_FORM_OID, "Subject record", SUBJECT_GROUP_OID),
                             (VISIT_FORM_OID, "Visit record", VISIT_GROUP_OID)):
        fd = _sub(mdv, "FormDef", {"OID": oid, "Name": name, "Repeating": "No"})
        _translated(fd, "Description", "crf-app: what the app keeps about the "
                                       + ("subject" if "SUBJECT" in oid else "visit")
                                       + " outside the case report forms")
        _sub(fd, "ItemGroupRef", {"ItemGroupOID": group, "OrderNumber": 1, "Mandatory": "Yes"})
    for oid, group, name, description in _repeating_records():
        fd = _sub(mdv, "FormDef", {"OID": oid, "Name": name, "Repeating": "No"})
        _translated(fd, "Description", description)
        _sub(fd, "ItemGroupRef", {"ItemGroupOID": group, "OrderNumber": 1, "Mandatory": "No"})


def _repeating_records() -> list[tuple[str, str, str, str]]:
    return [(log.form_oid, log.group_oid, log.name, log.description) for log in LOGS] + [
        (SIGNATURE_FORM_OID, SIGNATURE_GROUP_OID, "Electronic signatures",
         "crf-app: every electronic signature of the subject (valid or invalidated), one "
         "repeat per signature, each with its ODM Signature")]


def _record_group_defs(mdv: etree._Element) -> None:
    groups: list[tuple[str, str, tuple[RecordField, ...], str]] = [
        (SUBJECT_GROUP_OID, "Subject", SUBJECT_FIELDS, "No"),
        (VISIT_GROUP_OID, "Visit", VISIT_FIELDS, "No")]
    groups += [(log.group_oid, log.name, log.fields, "Yes") for log in LOGS]
    groups.append((SIGNATURE_GROUP_OID, "Signatures", SIGNATURE_FIELDS, "Yes"))
    for oid, name, fields, repeating in groups:
        ig = _sub(mdv, "ItemGroupDef", {"OID": oid, "Name": name, "Repeating": repeating})
        for i, f in enumerate(fields, start=1):
            _sub(ig, "ItemRef", {"ItemOID": f.oid, "OrderNumber": i, "Mandatory": "No"})


def _record_item_defs(mdv: etree._Element) -> None:
    fields: list[RecordField] = [*SUBJECT_FIELDS, *VISIT_FIELDS, *SIGNATURE_FIELDS]
    for log in LOGS:
        fields += log.fields
    for f in fields:
        attrs: dict[str, Any] = {"OID": f.oid, "Name": f.item_id, "DataType": f.data_type}
        if isinstance(f, LogField) and f.max_length:
            attrs["Length"] = f.max_length
        if f.data_type == "float":
            attrs["SignificantDigits"] = 3
        idef = _sub(mdv, "ItemDef", attrs)
        _translated(idef, "Question", f.label)
        if f.codelist:
            _sub(idef, "CodeListRef", {"CodeListOID": f.codelist})


def _record_codelists(mdv: etree._Element, plan: ExportPlan) -> None:
    protocol = plan.protocol
    lists: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("CL.CRFAPP.SITE", "Sites", [(s.code, s.name) for s in protocol.sites]),
        ("CL.CRFAPP.SEX", "Sex", list(SEXES.items())),
        ("CL.CRFAPP.ARM", "Arms", [(a.code, a.name) for a in protocol.arms]),
        ("CL.CRFAPP.SUBJECT_STATUS", "Subject status", list(SubjectStatus.LABELS.items())),
        (FORM_STATUS_CODELIST, "Form status",
         [(s, s.replace("_", " ").capitalize()) for s in FORM_STATUSES]),
        (QUERY_STATE_CODELIST, "Query state", [(s, s.capitalize()) for s in QUERY_STATES]),
        (FLAG_TYPE_CODELIST, "Annotation flag type",
         [(FLAG_STATUS, "Form status"), (FLAG_QUERY, "Query")]),
    ]
    for oid, name, codes in lists:
        _codelist(mdv, oid, name, codes)
    for oid, (name, data_type, mapping) in LOG_CODELISTS.items():
        _codelist(mdv, oid, name, list(mapping.items()), data_type)


def admin_element(plan: ExportPlan) -> etree._Element:
    """<AdminData>: the users named by the audit records and the sites (Locations)."""
    admin = _el("AdminData", {"StudyOID": plan.study_oid}, nsmap=True)
    for username, full_name in plan.users:
        user = _sub(admin, "User", {"OID": user_oid(username)})
        _sub(user, "LoginName", text=username)
        _sub(user, "FullName", text=full_name)
    for code, name in plan.sites:
        loc = _sub(admin, "Location", {"OID": site_oid(code), "Name": name or code,
                                       "LocationType": "Site"})
        _sub(loc, "MetaDataVersionRef", {"StudyOID": plan.study_oid,
                                         "MetaDataVersionOID": mdv_oid(plan.metadata_version),
                                         "EffectiveDate": plan.study_created.isoformat()})
    defs = [(oid, meaning) for meaning, oid in signature_oids(plan.signature_meanings).items()]
    for oid, meaning in [*defs, (GENERIC_SIGNATURE_OID, "Electronic signature (its meaning is "
                                                        "recorded with the signature)")]:
        sd = _sub(admin, "SignatureDef", {"OID": oid, "Methodology": "Electronic"})
        _sub(sd, "Meaning", text=meaning)
        _sub(sd, "LegalReason", text="21 CFR Part 11 electronic signature: user name and "
                                     "password entered again at signing")
    return admin
