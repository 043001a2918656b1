"""The declarative forms engine: form definitions (YAML, validated with pydantic), a small safe
expression language for show_if/compute/edit checks, and validation of what a user typed.

Pure Python: no Qt, SQLAlchemy or ReportLab.

    lib = load_form_library(Path("forms"))
    form = lib.get("vital_signs")
    result = validate_form(form, {"SYSBP": "120", "DIABP": "80"}, complete=False)
    result.ok, result.values, result.errors, result.warnings, result.computed, result.hidden
"""

from crf_app.domain.forms.engine import validate_form, validate_item
from crf_app.domain.forms.expressions import Expression, ExpressionError, parse_expression
from crf_app.domain.forms.library import (
    FormLibrary,
    check_form_files,
    load_form_file,
    load_form_library,
    parse_form,
)
from crf_app.domain.forms.results import FormResult, ItemIssue, ItemResult
from crf_app.domain.forms.schema import (
    ITEM_TYPES,
    CheckDef,
    Code,
    FormDef,
    ItemDef,
    Limits,
    SectionDef,
    SoftLimits,
)
from crf_app.domain.forms.types import decode_value, display_value

__all__ = [
    "ITEM_TYPES",
    "CheckDef",
    "Code",
    "Expression",
    "ExpressionError",
    "FormDef",
    "FormLibrary",
    "FormResult",
    "ItemDef",
    "ItemIssue",
    "ItemResult",
    "Limits",
    "SectionDef",
    "SoftLimits",
    "check_form_files",
    "decode_value",
    "display_value",
    "load_form_file",
    "load_form_library",
    "parse_expression",
    "parse_form",
    "validate_form",
    "validate_item",
]
