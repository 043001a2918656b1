"""The shipped CRF set loads, matches the schedule, serialises and fingerprints stably."""

from __future__ import annotations

import csv
import io
import json

import pytest

from crf_app.domain.errors import ProtocolError
from crf_app.domain.forms import (
    FormDef,
    FormLibrary,
    check_form_files,
    load_form_library,
)
from crf_app.domain.forms.dictionary import (
    COLUMNS,
    data_dictionary_rows,
    dictionary_csv,
    dictionary_markdown,
)
from crf_app.domain.protocol import load_protocol
from crf_app.paths import FORMS_DIR

LIB = load_form_library(FORMS_DIR)
EXPECTED = {"eligibility", "demographics", "medical_history", "vital_signs", "nihss", "mrs",
            "moca", "ham_a", "bdi_ii", "labs", "conmeds", "end_of_study"}


def test_every_shipped_form_file_loads():
    assert set(LIB.forms) == EXPECTED
    for form in LIB.forms.values():
        assert form.version >= 1
        assert form.items


@pytest.mark.parametrize("form_id", sorted(EXPECTED))
def test_each_form_file_loads_on_its_own(form_id):
    from crf_app.domain.forms import load_form_file
    from crf_app.domain.forms.library import load_codelists

    form = load_form_file(FORMS_DIR / f"{form_id}.yaml", load_codelists(FORMS_DIR /
                                                                         "codelists.yaml"))
    assert form == LIB.get(form_id)


def test_every_form_the_schedule_names_exists():
    protocol = load_protocol(FORMS_DIR / "study.yaml")
    assert set(protocol.form_ids()) <= set(LIB.forms)


def test_check_form_files_finds_no_problem_in_the_shipped_set():
    assert check_form_files(FORMS_DIR) == []


def test_get_unknown_form_is_a_key_error():
    with pytest.raises(KeyError, match="no form 'nope'"):
        LIB.get("nope")
    assert "vital_signs" in LIB


def test_item_counts_and_shapes():
    counts = {fid: len(f.items) for fid, f in LIB.forms.items()}
    assert counts["nihss"] == 16 and counts["ham_a"] == 15 and counts["bdi_ii"] == 22
    assert LIB.get("medical_history").section("conditions").repeating
    assert LIB.get("conmeds").section("medications").repeating
    assert LIB.get("vital_signs").item("BMI").is_computed


def test_shared_codelists_are_embedded_in_the_forms_that_use_them():
    demo = LIB.get("demographics")
    assert set(demo.codelists) == {"SEX", "ETHNIC", "RACE", "HANDEDNESS"}
    assert [c.code for c in demo.item("SEX").codes] == ["F", "M"]
    assert demo.codelists["SEX"] == LIB.codelists["SEX"]


def test_library_round_trips_exactly_through_json():
    data = LIB.to_dict()
    again = FormLibrary.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data
    assert again == LIB
    assert again.fingerprint() == LIB.fingerprint()
    assert set(data) == {"codelists", "forms"}


@pytest.mark.parametrize("form_id", sorted(EXPECTED))
def test_form_round_trips_and_keeps_its_fingerprint(form_id):
    form = LIB.get(form_id)
    data = json.loads(json.dumps(form.to_dict()))
    again = FormDef.from_dict(data)
    assert again == form
    assert again.to_dict() == form.to_dict()
    assert again.fingerprint() == form.fingerprint()
    assert len(form.fingerprint()) == 64


def test_fingerprint_is_stable_across_loads():
    other = load_form_library(FORMS_DIR)
    assert {k: f.fingerprint() for k, f in other.forms.items()} == \
        {k: f.fingerprint() for k, f in LIB.forms.items()}


def test_fingerprint_changes_when_an_item_changes():
    form = LIB.get("vital_signs")
    data = form.to_dict()
    data["sections"][0]["items"][1]["hard"]["max"] = 310
    changed = FormDef.from_dict(data)
    assert changed.fingerprint() != form.fingerprint()
    data = form.to_dict()
    data["sections"][0]["items"][1]["label"] = "Systolic blood pressure"
    assert FormDef.from_dict(data).fingerprint() != form.fingerprint()


def test_fingerprint_changes_when_a_used_codelist_changes():
    form = LIB.get("mrs")
    data = form.to_dict()
    data["codelists"]["MRS"][0]["label"] = "0 – Nothing"
    assert FormDef.from_dict(data).fingerprint() != form.fingerprint()


def test_a_damaged_stored_library_is_refused_with_its_path():
    data = LIB.to_dict()
    data["forms"]["vital_signs"]["sections"][0]["items"][1]["colour"] = "red"
    with pytest.raises(ProtocolError) as exc:
        FormLibrary.from_dict(data)
    assert "stored form library: forms.vital_signs.sections.0 (vital_signs).items.1 (SYSBP)" \
           ".colour: unknown key" in str(exc.value)
    with pytest.raises(ProtocolError, match="must be a mapping"):
        FormLibrary.from_dict(["not", "a", "dict"])


def test_data_dictionary_has_a_row_per_item():
    rows = data_dictionary_rows(LIB)
    assert len(rows) == sum(len(f.items) for f in LIB.forms.values())
    sysbp = next(r for r in rows if r["item"] == "SYSBP")
    assert (sysbp["unit"], sysbp["hard_min"], sysbp["hard_max"], sysbp["soft_min"],
            sysbp["soft_max"], sysbp["required"]) == ("mmHg", "40", "300", "90", "180", "Y")
    preg = next(r for r in rows if r["item"] == "EX_PREG")
    assert preg["show_if"] == 'SEX == "F"'
    sex = next(r for r in rows if r["item"] == "SEX" and r["form"] == "demographics")
    assert sex["codes"] == "F=Female; M=Male" and sex["codelist"] == "SEX"
    crp = next(r for r in rows if r["item"] == "CRP")
    assert (crp["soft_max"], crp["soft_flag"]) == ("5.0", "reference range")


def test_dictionary_csv_and_markdown():
    text = dictionary_csv(LIB)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert tuple(parsed[0]) == COLUMNS
    assert len(parsed) == len(data_dictionary_rows(LIB))
    md = dictionary_markdown(LIB)
    assert md.startswith("# Data dictionary")
    assert "## Vital signs (`vital_signs`, version 1)" in md
    assert "DIABP\\_LT\\_SYSBP" in md or "DIABP_LT_SYSBP" in md
