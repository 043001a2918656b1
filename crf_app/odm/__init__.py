"""CDISC ODM 1.3.2 export from plain data, and the OID scheme and plain records (ExportPlan,
SubjectRecord…) that crf-app's ODM files are made of: `scheme`, `records`, `metadata`,
`clinical` (the writer).

The metadata (Study: GlobalVariables, BasicDefinitions, MetaDataVersion) and AdminData are small
and built as trees; ClinicalData is written one SubjectData at a time as the plan's iterator
(crf_app.services.odm_export reads the database in batches) yields them, so memory does not
grow with the study. Nothing here reads the database. Every file validates against the official
ODM1-3-2.xsd; no vendor extension is used (crf-app specifics travel as Alias, FormalExpression
and Annotation/Flag, which ODM provides).

The OID scheme (what the importer reads back):

    StudyEventDef  SE.<visit code>            FormDef      F.<form id>
    ItemGroupDef   IG.<form id>.<section id>  ItemDef      I.<form id>.<item id>
    CodeList       CL.<name> / CL.<form>.<item>  Location  LOC.<site code>   User  USR.<username>

plus a reserved `CRFAPP` event and reserved forms that carry what ODM has no element for: the
subject record (initials, year of birth, arm, consent…), each visit's record (planned and actual
date, status, deviation), and in the subject's `CRFAPP` event the two logs and the signatures:

    F.CRFAPP.AE / IG.CRFAPP.AE      the adverse-event log, one repeat of the group per event
    F.CRFAPP.DOSE / IG.CRFAPP.DOSE  the dosing log, one repeat per administration or missed dose
    F.CRFAPP.SIGNATURE              every electronic signature (valid or invalidated), each repeat
                                    carrying an ODM <Signature> that references a SignatureDef

A log row's ItemGroupRepeatKey is its identity in every database (`log_row_key`: when and by
whom it was created), so a merge finds the same row on the other laptop. Log values travel with
their audited history like form values; dosing queries are annotations on the row.
Their OIDs contain `CRFAPP.`, which no visit code or form id can.
"""

from __future__ import annotations

from crf_app.odm.clinical import (
    Cancelled,
    ExportCancelled,
    ExportRefused,
    Progress,
    WrittenFile,
    write_odm,
    write_odm_file,
)
from crf_app.odm.metadata import (
    NS,
    ODM_TYPES,
    XML_LANG,
    admin_element,
    study_element,
)
from crf_app.odm.records import (
    Cell,
    Change,
    ExportPlan,
    FormRecord,
    LogRow,
    QueryNote,
    SignatureRecord,
    SubjectRecord,
    VisitRecord,
)
from crf_app.odm.scheme import (
    AE_FORM_OID,
    AE_GROUP_OID,
    AE_LOG,
    ALIAS_DAY,
    ALIAS_FORM_VERSION,
    ALIAS_WINDOW,
    DOSE_FORM_OID,
    DOSE_GROUP_OID,
    DOSE_LOG,
    EXPRESSION_CONTEXT,
    FLAG_QUERY,
    FLAG_STATUS,
    FLAG_TYPE_CODELIST,
    FORM_STATUS_CODELIST,
    FORM_STATUSES,
    GENERIC_SIGNATURE_OID,
    LOG_BY_ENTITY,
    LOG_CODELISTS,
    LOGS,
    MULTI_CODES,
    ODM_NS,
    QUERY_STATE_CODELIST,
    QUERY_STATES,
    SIGNATURE_FIELDS,
    SIGNATURE_FORM_OID,
    SIGNATURE_GROUP_OID,
    SNAPSHOT,
    SOURCE_SYSTEM,
    SUBJECT_EVENT_OID,
    SUBJECT_FIELDS,
    SUBJECT_FORM_OID,
    SUBJECT_GROUP_OID,
    TRANSACTIONAL,
    VISIT_FIELDS,
    VISIT_FORM_OID,
    VISIT_GROUP_OID,
    LogDef,
    LogField,
    RecordField,
    event_oid,
    form_oid,
    group_oid,
    item_entity_id,
    item_oid,
    log_row_key,
    mdv_oid,
    signature_oids,
    site_oid,
    text_of,
    timestamp,
    to_odm_value,
    user_oid,
)

__all__ = [
    "AE_FORM_OID",
    "AE_GROUP_OID",
    "AE_LOG",
    "ALIAS_DAY",
    "ALIAS_FORM_VERSION",
    "ALIAS_WINDOW",
    "DOSE_FORM_OID",
    "DOSE_GROUP_OID",
    "DOSE_LOG",
    "EXPRESSION_CONTEXT",
    "FLAG_QUERY",
    "FLAG_STATUS",
    "FLAG_TYPE_CODELIST",
    "FORM_STATUSES",
    "FORM_STATUS_CODELIST",
    "GENERIC_SIGNATURE_OID",
    "LOGS",
    "LOG_BY_ENTITY",
    "LOG_CODELISTS",
    "MULTI_CODES",
    "NS",
    "ODM_NS",
    "ODM_TYPES",
    "QUERY_STATES",
    "QUERY_STATE_CODELIST",
    "SIGNATURE_FIELDS",
    "SIGNATURE_FORM_OID",
    "SIGNATURE_GROUP_OID",
    "SNAPSHOT",
    "SOURCE_SYSTEM",
    "SUBJECT_EVENT_OID",
    "SUBJECT_FIELDS",
    "SUBJECT_FORM_OID",
    "SUBJECT_GROUP_OID",
    "TRANSACTIONAL",
    "VISIT_FIELDS",
    "VISIT_FORM_OID",
    "VISIT_GROUP_OID",
    "XML_LANG",
    "Cancelled",
    "Cell",
    "Change",
    "ExportCancelled",
    "ExportPlan",
    "ExportRefused",
    "FormRecord",
    "LogDef",
    "LogField",
    "LogRow",
    "Progress",
    "QueryNote",
    "RecordField",
    "SignatureRecord",
    "SubjectRecord",
    "VisitRecord",
    "WrittenFile",
    "admin_element",
    "event_oid",
    "form_oid",
    "group_oid",
    "item_entity_id",
    "item_oid",
    "log_row_key",
    "mdv_oid",
    "signature_oids",
    "site_oid",
    "study_element",
    "text_of",
    "timestamp",
    "to_odm_value",
    "user_oid",
    "write_odm",
    "write_odm_file",
]
