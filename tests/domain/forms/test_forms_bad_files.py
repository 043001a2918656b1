"""Bad form files are refused with a message naming the file, the item (key path) and the
rule it broke."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from crf_app.domain.errors import ProtocolError
from crf_app.domain.forms import check_form_files, load_form_library
from crf_app.paths import FORMS_DIR


def _item(id_: str, type_: str = "integer", **extra) -> dict:
    return {"id": id_, "label": f"Item {id_}", "type": type_, **extra}


def _form(*items: dict, form_id: str = "bad", **extra) -> dict:
    return {"id": form_id, "version": 1, "title": "Bad form",
            "sections": [{"id": "main", "title": "Main", "items": list(items)}], **extra}


def _refused(tmp_path: Path, data: dict | str, name: str = "bad.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False),
                    encoding="utf-8")
    with pytest.raises(ProtocolError) as exc:
        load_form_library(tmp_path)
    message = str(exc.value)
    assert str(path) in message
    assert check_form_files(tmp_path) == message.splitlines()
    return message


def test_unknown_key(tmp_path):
    msg = _refused(tmp_path, _form(_item("AGE", colour="red")))
    assert "bad.yaml: sections.0 (main).items.0 (AGE).colour: unknown key (not allowed here)" \
        in msg


def test_unknown_key_at_the_top_level(tmp_path):
    msg = _refused(tmp_path, _form(_item("AGE"), author="me"))
    assert "bad.yaml: author: unknown key (not allowed here)" in msg


def test_duplicate_item_id(tmp_path):
    msg = _refused(tmp_path, _form(_item("AGE"), _item("WEIGHT"), _item("AGE")))
    assert "bad.yaml: sections.0 (main).items.2 (AGE): id: duplicate item id 'AGE' " \
           "(first used at sections.0 (main).items.0 (AGE))" in msg


def test_duplicate_item_id_across_sections(tmp_path):
    data = _form(_item("AGE"))
    data["sections"].append({"id": "rows", "title": "Rows", "repeating": True,
                             "items": [_item("AGE", "text")]})
    assert "items.0 (AGE): id: duplicate item id 'AGE'" in _refused(tmp_path, data)


def test_unknown_reference_in_show_if_and_compute(tmp_path):
    msg = _refused(tmp_path, _form(_item("AGE", show_if="SEXX == \"F\""),
                                   _item("TOTAL", compute="AGE + SCORE")))
    assert "items.0 (AGE): show_if: refers to unknown item 'SEXX'" in msg
    assert "items.1 (TOTAL): compute: refers to unknown item 'SCORE'" in msg


def test_unknown_reference_in_a_check(tmp_path):
    msg = _refused(tmp_path, _form(_item("AGE"), checks=[
        {"id": "AGE_OK", "expression": "AGE < LIMIT", "message": "too old", "items": ["AGE"]}]))
    assert "bad.yaml: checks.0 (AGE_OK): expression: refers to unknown item 'LIMIT'" in msg


def test_circular_show_if(tmp_path):
    msg = _refused(tmp_path, _form(_item("A", "yes_no", show_if='B == "Y"'),
                                   _item("B", "yes_no", show_if='C == "Y"'),
                                   _item("C", "yes_no", show_if='A == "Y"')))
    assert "bad.yaml: sections.0 (main).items.0 (A): show_if: circular show_if/compute " \
           "dependency A -> B -> C -> A (A.show_if uses B, B.show_if uses C, " \
           "C.show_if uses A)" in msg


def test_circular_compute(tmp_path):
    msg = _refused(tmp_path, _form(_item("X", compute="Y + 1"), _item("Y", compute="X * 2")))
    assert "items.0 (X): compute: circular show_if/compute dependency X -> Y -> X " \
           "(X.compute uses Y, Y.compute uses X)" in msg


def test_an_item_depending_on_itself(tmp_path):
    msg = _refused(tmp_path, _form(_item("X", compute="X + 1")))
    assert "items.0 (X): compute: circular show_if/compute dependency X -> X" in msg


def test_a_cycle_through_show_if_and_compute(tmp_path):
    msg = _refused(tmp_path, _form(_item("X", compute="Y + 1"),
                                   _item("Y", show_if="X > 2")))
    assert "circular show_if/compute dependency X -> Y -> X (X.compute uses Y, " \
           "Y.show_if uses X)" in msg


def test_codelist_that_does_not_exist(tmp_path):
    msg = _refused(tmp_path, _form(_item("SEX", "choice", codelist="GENDERS")))
    assert "items.0 (SEX): codelist: codelist 'GENDERS' does not exist" in msg


def test_limits_on_a_choice_are_type_inconsistent(tmp_path):
    msg = _refused(tmp_path, _form(_item("SEX", "choice", codelist=[
        {"code": "F", "label": "Female"}], hard={"min": 1, "max": 2})))
    assert "items.0 (SEX): hard: limits apply to integer and decimal items only, not a " \
           "choice item" in msg


@pytest.mark.parametrize(("item", "expected"), [
    (_item("W", "decimal"), "precision: a decimal item needs a precision"),
    (_item("W", "integer", precision=1), "precision: only decimal items have a precision"),
    (_item("W", "date", unit="kg"), "unit: only integer and decimal items have a unit"),
    (_item("W", "integer", max_length=3), "max_length: only text items have a max_length"),
    (_item("W", "choice"), "codelist: a choice item needs a codelist"),
    (_item("W", "yes_no", codelist="SEX"), "codelist: only choice and multi_choice items"),
    (_item("W", "integer", hard={"min": 10, "max": 1}), "hard: min (10) must not exceed max"),
    (_item("W", "integer", hard={"min": 1, "max": 10}, soft={"max": 11}),
     "soft: soft limits must lie within the hard limits"),
    (_item("W", "decimal", precision=1, hard={"max": 1.25}),
     "hard.max: 1.25 has more decimals than precision 1"),
    (_item("W", "integer", hard={"max": 1.5}), "hard.max: 1.5 is not a whole number"),
    (_item("W", "integer", compute="1 + 1", required=True),
     "required: a computed item is filled in by the app and cannot be required"),
    (_item("w_lower"), "'w_lower': must be 1-32 upper-case letters"),
    (_item("W", "colour"), "type: Input should be"),
    (_item("W", "choice", codelist=[{"code": "A", "label": "a"}, {"code": "A", "label": "b"}]),
     "codelist.1.code: duplicate code 'A'"),
])
def test_type_inconsistent_definitions(tmp_path, item, expected):
    msg = _refused(tmp_path, _form(item))
    assert expected in msg
    assert "bad.yaml: sections.0 (main).items.0" in msg


@pytest.mark.parametrize(("expr", "expected"), [
    ("SEX == 1", "show_if: cannot compare a text with a number using '=='"),
    ("AGE + 1", "show_if: must be a condition"),
    ("AGE.real > 1", "show_if: attribute access ('.') is not supported"),
    ("open('x')", "show_if: 'open' is not supported"),
])
def test_bad_show_if_expressions(tmp_path, expr, expected):
    msg = _refused(tmp_path, _form(_item("AGE"), _item("SEX", "choice", codelist=[
        {"code": "F", "label": "Female"}]), _item("X", "text", show_if=expr)))
    assert f"items.2 (X): {expected}" in msg


def test_compute_type_must_fit_the_item(tmp_path):
    msg = _refused(tmp_path, _form(_item("AGE"), _item("X", "date", compute="AGE + 1")))
    assert "items.1 (X): compute: gives a number, which does not fit a date item" in msg


def test_a_plain_item_cannot_use_a_row_item(tmp_path):
    data = _form(_item("N", compute="count(DOSE)"))
    data["sections"].append({"id": "rows", "title": "Rows", "repeating": True,
                             "items": [_item("DOSE")]})
    msg = _refused(tmp_path, data)
    assert "items.0 (N): compute: refers to 'DOSE', an item of repeating section 'rows'" in msg


def test_duplicate_yaml_keys_are_refused(tmp_path):
    text = ("id: bad\nversion: 1\ntitle: T\nsections:\n  - id: main\n    title: M\n"
            "    items:\n      - id: AGE\n        label: Age\n        label: Again\n"
            "        type: integer\n")
    msg = _refused(tmp_path, text)
    assert "not valid YAML" in msg and "duplicate key 'label'" in msg


def test_not_yaml_and_not_a_mapping(tmp_path):
    assert "not valid YAML" in _refused(tmp_path, "id: [unclosed\n")
    assert "(top level): must be a mapping" in _refused(tmp_path, "- 1\n- 2\n")


def test_form_id_must_match_the_file_name(tmp_path):
    msg = _refused(tmp_path, _form(_item("AGE"), form_id="other"))
    assert "id: the form id 'other' must match the file name (other.yaml)" in msg


def test_version_and_sections_rules(tmp_path):
    data = _form(_item("AGE"))
    data["version"] = 0
    assert "bad.yaml: version: Input should be greater than or equal to 1" in \
        _refused(tmp_path, data)


def test_local_codelist_may_not_shadow_a_shared_one(tmp_path):
    (tmp_path / "codelists.yaml").write_text(
        "codelists:\n  SEX:\n    - {code: F, label: Female}\n", encoding="utf-8")
    msg = _refused(tmp_path, _form(_item("S", "choice", codelist="SEX"),
                                   codelists={"SEX": [{"code": "X", "label": "x"}]}))
    assert "codelists.SEX: also defined in codelists.yaml" in msg


def test_bad_codelists_file(tmp_path):
    (tmp_path / "codelists.yaml").write_text(
        "codelists:\n  SEX:\n    - {code: F, label: Female}\n    - {code: F, label: Again}\n"
        "  lower: []\n", encoding="utf-8")
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(_form(_item("A"), form_id="ok")),
                                      encoding="utf-8")
    problems = check_form_files(tmp_path)
    assert any("codelists.yaml: codelists.lower" in p for p in problems), problems


def test_every_problem_of_every_file_is_listed(tmp_path):
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(
            yaml.safe_dump(_form(_item("A", colour=1), form_id=name)), encoding="utf-8")
    problems = check_form_files(tmp_path)
    assert [p.split(":")[0] for p in problems] == [str(tmp_path / "one.yaml"),
                                                   str(tmp_path / "two.yaml")]


def test_check_form_files_names_forms_missing_for_the_schedule(tmp_path):
    shutil.copy(FORMS_DIR / "study.yaml", tmp_path / "study.yaml")
    shutil.copy(FORMS_DIR / "codelists.yaml", tmp_path / "codelists.yaml")
    shutil.copy(FORMS_DIR / "mrs.yaml", tmp_path / "mrs.yaml")
    problems = check_form_files(tmp_path)
    assert len(problems) == 1
    assert "study.yaml: visits.forms: no form file defines eligibility" in problems[0]


def test_an_empty_or_missing_folder(tmp_path):
    assert "no form files" in check_form_files(tmp_path)[0]
    assert "not a folder" in check_form_files(tmp_path / "nope")[0]
