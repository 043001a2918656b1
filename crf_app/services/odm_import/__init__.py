"""Importing CDISC ODM files: merging another laptop's transactional file into this study, or
creating a new study from any ODM 1.3 file (crf-app, OpenClinica, REDCap…), all or nothing.

Everything happens in one transaction: any problem (a file that is not ODM, another study, a
gap in the FileOID chain, an unknown OID, a value of the wrong type, a truncated file) rolls it
all back and is reported in plain words.

    reader       safe, streamed reading (no DOCTYPE, no entities, no network)
    mapping      how a file's OIDs map onto the study; value converters; the problems list
    parse        SubjectData -> plain records (forms, subject/visit records, logs, signatures)
    merge        records -> the database: subjects, visits, forms (one transaction)
    history      one value: its incoming audited history against the local one; conflicts
    logs         the adverse-event and dosing logs and the signatures
    targets      the stored values a merge changes
    rows, bulk   new subjects written without ORM objects; audit events and values in bulk
    laptop       merging a crf-app file of this study (import_odm) and the FileOID chain
    conflicts    the conflicts list and resolving one
    definitions, new_study   a new study from any ODM file (import_new_study)
    report       ImportReport and the errors
"""

from crf_app.odm.reader import check_prolog, file_sha256, stream_odm
from crf_app.odm.report import (
    ImportCancelled,
    ImportRefused,
    ImportReport,
    format_report,
)
from crf_app.services.odm_import.conflicts import ConflictRow, list_conflicts, resolve_conflict
from crf_app.services.odm_import.laptop import check_chain, import_odm
from crf_app.services.odm_import.new_study import import_new_study

__all__ = [
    "ConflictRow",
    "ImportCancelled",
    "ImportRefused",
    "ImportReport",
    "check_chain",
    "check_prolog",
    "file_sha256",
    "format_report",
    "import_new_study",
    "import_odm",
    "list_conflicts",
    "resolve_conflict",
    "stream_odm",
]
