"""Loading the form files (forms/*.yaml, shared codelists in forms/codelists.yaml) into a
FormLibrary, and storing/restoring it (the study's metadata version, ODM MetaDataVersion style).

Every problem names the file, the key path (with the id of the item, section or check it is in)
and the rule that was broken, one problem per line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from crf_app.domain.errors import ProtocolError
from crf_app.domain.forms.schema import (
    CODE_PATTERN,
    CODELIST_PATTERN,
    FORM_ID_PATTERN,
    ITEM_ID_PATTERN,
    CodeList,
    CodelistName,
    FormDef,
    _Strict,
    canonical_json,
)

CODELISTS_FILE = "codelists.yaml"
NOT_FORMS = frozenset({"study.yaml", CODELISTS_FILE})
_UNION_TAG = re.compile(r"^(str|int|float|bool|constrained-str|list\[.*\]|dict\[.*\]|"
                        r"function-.*|nullable\[.*\]|.*\[.*\])$")
_MESSAGES = {
    "extra_forbidden": "unknown key (not allowed here)",
    "missing": "required key is missing",
}
_PATTERNS = {
    ITEM_ID_PATTERN: "must be 1-32 upper-case letters, digits or '_', starting with a letter "
                     "(CDASH style, e.g. SYSBP)",
    FORM_ID_PATTERN: "must be 1-40 lower-case letters, digits or '_', starting with a letter",
    CODELIST_PATTERN: "a codelist name must be upper-case letters, digits or '_', starting "
                      "with a letter",
    CODE_PATTERN: "a code must be 1-40 letters, digits or '_' '.' '+' '-' (no spaces or '|')",
}


class FormLibrary(_Strict):
    """Every form of a study and the shared codelists, keyed by id."""

    codelists: dict[CodelistName, CodeList] = Field(default_factory=dict)
    forms: dict[str, FormDef] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keys_are_ids(self) -> FormLibrary:
        for key, form in self.forms.items():
            if key != form.id:
                raise ValueError(f"forms.{key}: key does not match the form id {form.id!r}")
        return self

    def get(self, form_id: str) -> FormDef:
        """The form `form_id`; KeyError naming the known forms if there is none."""
        try:
            return self.forms[form_id]
        except KeyError:
            raise KeyError(f"no form {form_id!r} (known: {', '.join(sorted(self.forms))})"
                           ) from None

    def __contains__(self, form_id: object) -> bool:
        return form_id in self.forms

    def to_dict(self) -> dict[str, Any]:
        """{"codelists": {...}, "forms": {id: FormDef.to_dict()}}, JSON-safe; round-trips."""
        return {"codelists": {name: [c.model_dump(mode="json") for c in codes]
                              for name, codes in self.codelists.items()},
                "forms": {fid: form.to_dict() for fid, form in self.forms.items()}}

    @classmethod
    def from_dict(cls, data: Any, source: str = "stored form library") -> FormLibrary:
        if not isinstance(data, dict):
            raise ProtocolError(f"{source}: (top level): must be a mapping of keys to values")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ProtocolError(format_errors(source, exc, data)) from None

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()


# --- error messages ---------------------------------------------------------------------------
def _is_tag(key: Any, node: Any) -> bool:
    """A pydantic union branch in an error location, not a key of the file."""
    return isinstance(key, str) and bool(_UNION_TAG.match(key)) and not (
        isinstance(node, dict) and key in node)


def _key_path(loc: tuple, data: Any) -> str:
    parts: list[str] = []
    node = data
    for key in loc:
        if _is_tag(key, node):
            continue
        part = str(key)
        child = None
        if isinstance(node, dict):
            child = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            child = node[key]
            if isinstance(child, dict) and isinstance(child.get("id"), str):
                part = f"{key} ({child['id']})"
        parts.append(part)
        node = child
    return ".".join(parts)


def format_errors(source: str, exc: ValidationError, data: Any) -> str:
    """One line per broken rule: '<source>: <key path (id)>: <rule>'."""
    lines: list[str] = []
    errors = exc.errors()
    # A value that fits no branch of a union gets one error per branch: when some branch got
    # further than a plain type mismatch, keep only those.
    deeper = {tuple(e["loc"][:i]) for e in errors for i, k in enumerate(e["loc"])
              if isinstance(k, str) and _UNION_TAG.match(k) and not e["type"].endswith("_type")}
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"].endswith("_type") and loc and loc[:-1] in deeper:
            continue
        path = _key_path(loc, data)
        msg = _MESSAGES.get(err["type"], err["msg"]).removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch":
            pattern = (err.get("ctx") or {}).get("pattern")
            msg = f"{err['input']!r}: {_PATTERNS.get(pattern, msg)}"
        for line in msg.splitlines():
            text = f"{source}: {path}: {line}" if path else f"{source}: {line}"
            if text not in lines:
                lines.append(text)
    return "\n".join(lines)


def parse_form(data: Any, source: str = "form definition") -> FormDef:
    """Validate one form mapping (codelists embedded); ProtocolError naming source and path."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{source}: (top level): must be a mapping of keys to values")
    try:
        return FormDef.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(format_errors(source, exc, data)) from None


# --- YAML files -------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
                    ) -> dict:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _unique_mapping)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{path}: cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


class _CodelistFile(_Strict):
    codelists: dict[CodelistName, CodeList]


def load_codelists(path: Path) -> dict[str, Any]:
    """The shared codelists of codelists.yaml ({} if there is no such file)."""
    if not path.exists():
        return {}
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ProtocolError(f"{path}: (top level): must be a mapping with a 'codelists' key")
    try:
        parsed = _CodelistFile.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(format_errors(str(path), exc, data)) from None
    problems = []
    for name, codes in parsed.codelists.items():
        seen: set[str] = set()
        for i, code in enumerate(codes):
            if code.code in seen:
                problems.append(f"{path}: codelists.{name}.{i}.code: duplicate code "
                                f"{code.code!r}")
            seen.add(code.code)
    if problems:
        raise ProtocolError("\n".join(problems))
    return dict(parsed.codelists)


def load_form_file(path: Path, shared: dict[str, Any] | None = None) -> FormDef:
    """One form file; the shared codelists it uses are embedded in the FormDef."""
    shared = shared or {}
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ProtocolError(f"{path}: (top level): must be a mapping of keys to values")
    local = data.get("codelists") or {}
    if isinstance(local, dict):
        clash = sorted(set(local) & set(shared))
        if clash:
            raise ProtocolError("\n".join(
                f"{path}: codelists.{name}: also defined in {CODELISTS_FILE}; rename one"
                for name in clash))
        used = {item.get("codelist") for sec in _dicts(data.get("sections"))
                for item in _dicts(sec.get("items")) if isinstance(item.get("codelist"), str)}
        embedded = {name: [c.model_dump() for c in shared[name]]
                    for name in sorted(used) if name in shared}
        if embedded:
            data = {**data, "codelists": {**local, **embedded}}
    form = parse_form(data, str(path))
    if form.id != path.stem:
        raise ProtocolError(f"{path}: id: the form id {form.id!r} must match the file name "
                            f"({form.id}.yaml)")
    return form


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _load(forms_dir: Path) -> tuple[FormLibrary | None, list[str]]:
    if not forms_dir.is_dir():
        return None, [f"{forms_dir}: not a folder"]
    problems: list[str] = []
    try:
        shared = load_codelists(forms_dir / CODELISTS_FILE)
    except ProtocolError as exc:
        problems.extend(str(exc).splitlines())
        shared = {}
    forms: dict[str, FormDef] = {}
    files = sorted(p for p in forms_dir.glob("*.yaml") if p.name not in NOT_FORMS)
    if not files:
        problems.append(f"{forms_dir}: no form files (*.yaml besides study.yaml and "
                        f"{CODELISTS_FILE})")
    for path in files:
        try:
            form = load_form_file(path, shared)
        except ProtocolError as exc:
            problems.extend(str(exc).splitlines())
            continue
        forms[form.id] = form
    if problems:
        return None, problems
    return FormLibrary(codelists=shared, forms=forms), []


def load_form_library(forms_dir: Path) -> FormLibrary:
    """Every forms/*.yaml except study.yaml (codelists.yaml is shared); ProtocolError listing
    every problem (one per line) if any file is bad."""
    library, problems = _load(Path(forms_dir))
    if problems or library is None:
        raise ProtocolError("\n".join(problems))
    return library


def check_form_files(forms_dir: Path) -> list[str]:
    """Every problem with the form files (empty = all good), for `crf-app forms check`.

    Also checks that every form study.yaml schedules (if there is a study.yaml) has a file.
    """
    forms_dir = Path(forms_dir)
    library, problems = _load(forms_dir)
    study = forms_dir / "study.yaml"
    if library is not None and study.exists():
        from crf_app.domain.protocol import load_protocol

        try:
            protocol = load_protocol(study)
        except ProtocolError as exc:
            return [*problems, *str(exc).splitlines()]
        missing = [f for f in protocol.form_ids() if f not in library.forms]
        if missing:
            problems.append(f"{study}: visits.forms: no form file defines "
                            f"{', '.join(missing)}")
    return problems
