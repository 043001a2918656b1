"""The OID scheme of crf-app's ODM files and the reserved records: the subject and visit
records, the adverse-event and dosing logs, the signatures (see crf_app.odm)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crf_app.domain.addresses import item_address
from crf_app.domain.adverse_events import (
    AE_ACTIONS,
    AE_GRADES,
    AE_LOCATIONS,
    AE_OUTCOMES,
    AE_RELATIONSHIPS,
    AE_SEVERITIES,
    AE_TERMS,
    SERIOUSNESS_CRITERIA,
    TREATMENT_MAX,
    VERBATIM_MAX,
    YES_NO,
)
from crf_app.domain.dosing import GIVEN_BY, LOT_MAX, MISSED_REASON_MAX, NOSTRILS, ROUTES
from crf_app.domain.values import value_text_or_none

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
SOURCE_SYSTEM = "crf-app"
TRANSACTIONAL, SNAPSHOT = "Transactional", "Snapshot"

# --- the OID scheme -----------------------------------------------------------------------------
SUBJECT_EVENT_OID = "SE.CRFAPP.SUBJECT"
SUBJECT_FORM_OID = "F.CRFAPP.SUBJECT"
SUBJECT_GROUP_OID = "IG.CRFAPP.SUBJECT"
VISIT_FORM_OID = "F.CRFAPP.VISIT"
VISIT_GROUP_OID = "IG.CRFAPP.VISIT"
FORM_STATUS_CODELIST = "CL.CRFAPP.FORM_STATUS"
QUERY_STATE_CODELIST = "CL.CRFAPP.QUERY_STATE"
FLAG_TYPE_CODELIST = "CL.CRFAPP.FLAG_TYPE"
FLAG_STATUS, FLAG_QUERY = "STATUS", "QUERY"
FORM_STATUSES = ("not_started", "in_progress", "complete", "verified", "signed", "locked")
QUERY_STATES = ("open", "answered", "closed")
ALIAS_DAY, ALIAS_WINDOW, ALIAS_FORM_VERSION = "crf-app:day", "crf-app:window", "crf-app:version"
EXPRESSION_CONTEXT = "crf-app"


def event_oid(code: str) -> str:
    return f"SE.{code}"


def form_oid(form_id: str) -> str:
    return f"F.{form_id}"


def group_oid(form_id: str, section_id: str) -> str:
    return f"IG.{form_id}.{section_id}"


def item_oid(form_id: str, item_id: str) -> str:
    return f"I.{form_id}.{item_id}"


def site_oid(code: str) -> str:
    return f"LOC.{code}"


def user_oid(username: str) -> str:
    return f"USR.{username}"


def mdv_oid(version: int) -> str:
    return f"MDV.{version}"


@dataclass(frozen=True)
class RecordField:
    """A subject or visit attribute carried as an item of a reserved CRFAPP form."""

    attr: str  # model attribute, and the audit event's field
    item_id: str
    label: str
    data_type: str  # ODM DataType
    codelist: str | None = None  # CRFAPP codelist OID

    @property
    def oid(self) -> str:
        return f"I.CRFAPP.{self.item_id}"


SUBJECT_FIELDS = (
    RecordField("site", "SITE", "Site", "text", "CL.CRFAPP.SITE"),
    RecordField("initials", "INITIALS", "Initials", "text"),
    RecordField("birth_year", "BRTHYR", "Year of birth", "integer"),
    RecordField("sex", "SEX", "Sex", "text", "CL.CRFAPP.SEX"),
    RecordField("arm", "ARM", "Arm", "text", "CL.CRFAPP.ARM"),
    RecordField("consent_date", "RFICDTC", "Informed-consent date", "date"),
    RecordField("enrolled_on", "ENRLDT", "Enrolment date", "date"),
    RecordField("baseline_date", "BASEDT", "Baseline date (study day 1)", "date"),
    RecordField("status", "SUBJSTAT", "Subject status", "text", "CL.CRFAPP.SUBJECT_STATUS"),
    RecordField("status_reason", "STATRSN", "Reason for the status", "text"),
    RecordField("status_date", "STATDT", "Date of the status", "date"),
)
VISIT_FIELDS = (
    RecordField("planned_date", "PLANDT", "Planned date", "date"),
    RecordField("actual_date", "VISDT", "Visit date", "date"),
    RecordField("status", "VISSTAT", "Visit status", "text"),
    RecordField("deviation", "DEVIATN", "Protocol deviation", "text"),
)


@dataclass(frozen=True)
class LogField(RecordField):
    """A column of a log row (an item of a reserved repeating group).

    `attr` is the field name the log's audit events use; `column` the model column when it
    differs ("" for derived fields such as an AE's seriousness criteria).
    """

    column: str | None = None
    audited: bool = True
    max_length: int | None = None

    @property
    def model_column(self) -> str:
        return self.attr if self.column is None else self.column


@dataclass(frozen=True)
class LogDef:
    """One log carried as a reserved form with one repeating item group."""

    entity: str  # the audit entity of its rows
    form_oid: str
    group_oid: str
    name: str
    description: str
    fields: tuple[LogField, ...]

    def field(self, attr: str) -> LogField:
        return next(f for f in self.fields if f.attr == attr)


AE_FORM_OID, AE_GROUP_OID = "F.CRFAPP.AE", "IG.CRFAPP.AE"
DOSE_FORM_OID, DOSE_GROUP_OID = "F.CRFAPP.DOSE", "IG.CRFAPP.DOSE"
SIGNATURE_FORM_OID, SIGNATURE_GROUP_OID = "F.CRFAPP.SIGNATURE", "IG.CRFAPP.SIGNATURE"
GENERIC_SIGNATURE_OID = "SD.CRFAPP"
LOG_CODELISTS: dict[str, tuple[str, str, Any]] = {  # OID -> (name, data type, codes)
    "CL.CRFAPP.NY": ("Yes/No", "text", YES_NO),
    "CL.CRFAPP.AE_TERM": ("Adverse event terms", "text", AE_TERMS),
    "CL.CRFAPP.AE_LOC": ("Adverse event locations", "text", AE_LOCATIONS),
    "CL.CRFAPP.AE_SEV": ("Severity", "text", AE_SEVERITIES),
    "CL.CRFAPP.AE_GRADE": ("CTCAE grade", "integer", AE_GRADES),
    "CL.CRFAPP.AE_CRIT": ("Seriousness criteria", "text", SERIOUSNESS_CRITERIA),
    "CL.CRFAPP.AE_REL": ("Relationship to the study drug", "text", AE_RELATIONSHIPS),
    "CL.CRFAPP.AE_ACN": ("Action taken with the study drug", "text", AE_ACTIONS),
    "CL.CRFAPP.AE_OUT": ("Outcome", "text", AE_OUTCOMES),
    "CL.CRFAPP.EX_LOC": ("Nostril", "text", NOSTRILS),
    "CL.CRFAPP.EX_ROUTE": ("Route", "text", ROUTES),
    "CL.CRFAPP.EX_GIVBY": ("Given by", "text", GIVEN_BY),
    "CL.CRFAPP.SIG_SCOPE": ("Signature scope", "text",
                            {"form": "Form", "visit": "Visit", "casebook": "Casebook"}),
    "CL.CRFAPP.SIG_STATE": ("Signature state", "text",
                            {"valid": "Valid", "invalidated": "Invalidated"}),
}
MULTI_CODES = {"criteria": "CL.CRFAPP.AE_CRIT"}  # several codes of the list, comma-separated

AE_LOG = LogDef("adverse_event", AE_FORM_OID, AE_GROUP_OID, "Adverse events",
                "crf-app: the adverse-event log (CDASH AE), one repeat per event", (
    LogField("sequence", "AESPID", "Adverse event number (per subject)", "integer",
             audited=False),
    LogField("term", "AEDECOD", "Adverse event term", "text", "CL.CRFAPP.AE_TERM",
             max_length=40),
    LogField("verbatim", "AETERM", "Verbatim term", "text", max_length=VERBATIM_MAX),
    LogField("location", "AELOC", "Location", "text", "CL.CRFAPP.AE_LOC", max_length=20),
    LogField("start_date", "AESTDAT", "Start date", "date"),
    LogField("start_time", "AESTTIM", "Start time", "time"),
    LogField("end_date", "AEENDAT", "End date", "date"),
    LogField("ongoing", "AEONGO", "Ongoing", "text", "CL.CRFAPP.NY"),
    LogField("severity", "AESEV", "Severity", "text", "CL.CRFAPP.AE_SEV", max_length=10),
    LogField("grade", "AETOXGR", "CTCAE grade", "integer", "CL.CRFAPP.AE_GRADE"),
    LogField("serious", "AESER", "Serious", "text", "CL.CRFAPP.NY"),
    LogField("criteria", "AESCRIT", "Seriousness criteria (codes of CL.CRFAPP.AE_CRIT, "
             "comma-separated)", "text", column="", max_length=120),
    LogField("relationship", "AEREL", "Relationship to the study drug", "text",
             "CL.CRFAPP.AE_REL", max_length=20),
    LogField("action", "AEACN", "Action taken with the study drug", "text", "CL.CRFAPP.AE_ACN",
             max_length=20),
    LogField("outcome", "AEOUT", "Outcome", "text", "CL.CRFAPP.AE_OUT", max_length=30),
    LogField("treatment", "AECONTRT", "Treatment given", "text", max_length=TREATMENT_MAX),
    LogField("flags", "AEFLAGS", "Checks flagged when saved (rule names)", "text",
             max_length=120),
    LogField("flag_text", "AEFLGTXT", "Checks flagged when saved (messages)", "text",
             audited=False),
    LogField("sae_recorded_at", "AESAEDTC", "Recorded as serious at (SAE clock start)",
             "datetime"),
    LogField("sae_reported_at", "AESAERDT", "SAE report received by the sponsor at",
             "datetime"),
    LogField("created_at", "AECRTDTC", "Record created at", "datetime", audited=False),
    LogField("created_by", "AECRTBY", "Record created by", "text", audited=False,
             max_length=64),
))
DOSE_LOG = LogDef("dose", DOSE_FORM_OID, DOSE_GROUP_OID, "Dosing",
                  "crf-app: the dosing log (CDASH EX), one repeat per administration or "
                  "missed dose", (
    LogField("date", "EXSTDAT", "Date", "date", column="dose_date"),
    LogField("time", "EXSTTIM", "Time", "time", column="dose_time"),
    LogField("dose_mg", "EXDOSE", "Dose per instillation (mg)", "float"),
    LogField("dose_unit", "EXDOSU", "Dose unit", "text", audited=False, max_length=10),
    LogField("instillations", "EXNINST", "Instillations", "integer"),
    LogField("nostril", "EXLOC", "Nostril", "text", "CL.CRFAPP.EX_LOC", max_length=20),
    LogField("route", "EXROUTE", "Route", "text", "CL.CRFAPP.EX_ROUTE", max_length=20),
    LogField("lot", "EXLOT", "Lot number", "text", max_length=LOT_MAX),
    LogField("given_by", "EXGIVBY", "Given by", "text", "CL.CRFAPP.EX_GIVBY", max_length=10),
    LogField("missed", "EXMISSED", "Dose missed", "text", "CL.CRFAPP.NY"),
    LogField("missed_reason", "EXREASOC", "Reason the dose was missed", "text",
             max_length=MISSED_REASON_MAX),
    LogField("findings", "EXFINDNG", "Checks that raised a query (rule names)", "text",
             max_length=200),
    LogField("warnings", "EXWARN", "Checks shown as warnings (rule names)", "text",
             audited=False, max_length=200),
    LogField("created_at", "EXCRTDTC", "Record created at", "datetime", audited=False),
    LogField("created_by", "EXCRTBY", "Record created by", "text", audited=False,
             max_length=64),
))
LOGS = (AE_LOG, DOSE_LOG)
SIGNATURE_FIELDS = (
    LogField("scope", "SGSCOPE", "Signed scope", "text", "CL.CRFAPP.SIG_SCOPE", audited=False),
    LogField("visit", "SGVISIT", "Visit signed (visit code)", "text", audited=False),
    LogField("form", "SGFORM", "Form signed (form id)", "text", audited=False),
    LogField("username", "SGUSER", "Signer (user name)", "text", audited=False),
    LogField("printed_name", "SGNAME", "Printed name of the signer", "text", audited=False),
    LogField("meaning", "SGMEAN", "Meaning of the signature", "text", audited=False),
    LogField("signed_at", "SGDTC", "Signed at", "datetime", audited=False),
    LogField("values_hash", "SGHASH", "SHA-256 of the values signed (in the signing database)",
             "text", audited=False),
    LogField("forms_signed", "SGNFORM", "Forms signed", "integer", audited=False),
    LogField("state", "SGSTATE", "State", "text", "CL.CRFAPP.SIG_STATE", audited=False),
    LogField("invalidated_at", "SGINVDTC", "Invalidated at", "datetime", audited=False),
    LogField("invalidated_reason", "SGINVRSN", "Why it was invalidated", "text",
             audited=False),
)


def log_row_key(created_at: datetime, created_by: str, ordinal: int) -> str:
    """A log row's identity in every database: when and by whom it was created, and its rank
    among the rows the same save created (the quick daily entry saves several at once)."""
    return f"{timestamp(created_at)}/{created_by}/{ordinal}"


def signature_oids(meanings: list[str]) -> dict[str, str]:
    """SignatureDef OIDs by meaning (SD.1, SD.2… in the order given)."""
    return {m: f"SD.{i}" for i, m in enumerate(dict.fromkeys(meanings), start=1)}


text_of = value_text_or_none  # a stored attribute as the audit trail records it


def item_entity_id(screening_number: str, visit_code: str, form_id: str, item_id: str,
                   row: int | None) -> str:
    """The audit entity id of one value (crf_app.domain.addresses)."""
    return item_address(screening_number, visit_code, form_id, item_id, row)



def timestamp(at: datetime) -> str:
    """An ODM datetime in UTC with microseconds (what the audit trail stores)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def to_odm_value(item_type: str | None, value: str) -> str:
    """crf-app's canonical text -> the ODM value (ISO 8601 times carry seconds)."""
    if item_type == "time" and len(value) == 5:
        return value + ":00"
    if item_type == "datetime" and len(value) == 16:
        return value + ":00"
    return value


LOG_BY_ENTITY = {log.entity: log for log in LOGS}
