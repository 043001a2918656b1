"""Computed items against hand-computed totals: NIHSS, MoCA, HAM-A, BDI-II, BMI, eligibility."""

from __future__ import annotations

import pytest

from crf_app.domain.forms import load_form_library, validate_form
from crf_app.paths import FORMS_DIR

LIB = load_form_library(FORMS_DIR)

NIHSS = {"NIH1A": "1", "NIH1B": "2", "NIH1C": "0", "NIH2": "1", "NIH3": "2", "NIH4": "3",
         "NIH5A": "4", "NIH5B": "0", "NIH6A": "3", "NIH6B": "1", "NIH7": "2", "NIH8": "1",
         "NIH9": "0", "NIH10": "2", "NIH11": "1"}


def test_nihss_total_is_the_sum_of_the_fifteen_items():
    result = validate_form(LIB.get("nihss"), NIHSS, complete=True)
    assert result.ok, result.errors
    assert result.computed == {"NIHTOT": "23"}  # 1+2+0+1+2+3+4+0+3+1+2+1+0+2+1
    assert result.values["NIHTOT"] == "23"


def test_nihss_maximum_is_42_and_each_item_has_its_own_range():
    form = LIB.get("nihss")
    maxima = {i.id: int(i.bounds[1]) for i in form.items if not i.is_computed}
    assert maxima == {"NIH1A": 3, "NIH1B": 2, "NIH1C": 2, "NIH2": 2, "NIH3": 3, "NIH4": 3,
                      "NIH5A": 4, "NIH5B": 4, "NIH6A": 4, "NIH6B": 4, "NIH7": 2, "NIH8": 2,
                      "NIH9": 3, "NIH10": 2, "NIH11": 2}
    result = validate_form(form, {k: str(v) for k, v in maxima.items()})
    assert result.computed["NIHTOT"] == "42"
    bad = validate_form(form, {**NIHSS, "NIH1B": "3"})
    assert [(e.item_id, e.rule) for e in bad.errors] == [("NIH1B", "hard_max")]
    assert "NIHTOT" not in bad.computed


def test_nihss_total_is_empty_until_every_item_is_scored():
    partial = dict(NIHSS)
    del partial["NIH9"]
    result = validate_form(LIB.get("nihss"), partial)
    assert result.ok and "NIHTOT" not in result.values and result.computed == {}
    done = validate_form(LIB.get("nihss"), partial, complete=True)
    assert [(e.item_id, e.rule) for e in done.errors] == [("NIH9", "required")]


MOCA = {"MOCA_VIS": "4", "MOCA_NAM": "3", "MOCA_ATT": "5", "MOCA_LANG": "2", "MOCA_ABS": "1",
        "MOCA_REC": "3", "MOCA_ORI": "6"}  # 24


@pytest.mark.parametrize(("edu", "scores", "total"), [
    ("N", MOCA, "24"),
    ("Y", MOCA, "25"),
    ("N", {"MOCA_VIS": "5", "MOCA_NAM": "3", "MOCA_ATT": "6", "MOCA_LANG": "3",
           "MOCA_ABS": "2", "MOCA_REC": "5", "MOCA_ORI": "6"}, "30"),
    ("Y", {"MOCA_VIS": "5", "MOCA_NAM": "3", "MOCA_ATT": "6", "MOCA_LANG": "3",
           "MOCA_ABS": "2", "MOCA_REC": "5", "MOCA_ORI": "6"}, "30"),  # capped at 30
    ("Y", {"MOCA_VIS": "5", "MOCA_NAM": "3", "MOCA_ATT": "6", "MOCA_LANG": "3",
           "MOCA_ABS": "2", "MOCA_REC": "4", "MOCA_ORI": "6"}, "30"),  # 29 + 1
    ("Y", dict.fromkeys(MOCA, "0"), "1"),
])
def test_moca_total_with_and_without_the_education_point(edu, scores, total):
    result = validate_form(LIB.get("moca"), {**scores, "MOCA_EDU": edu}, complete=True)
    assert result.ok, result.errors
    assert result.computed == {"MOCA_TOT": total}


def test_moca_total_waits_for_the_education_answer():
    result = validate_form(LIB.get("moca"), MOCA)
    assert result.computed == {}


def test_ham_a_total():
    raw = {f"HAMA{n:02d}": str(n % 5) for n in range(1, 15)}  # 1,2,3,4,0,1,2,3,4,0,1,2,3,4
    result = validate_form(LIB.get("ham_a"), raw, complete=True)
    assert result.ok
    assert result.computed == {"HAMATOT": "30"}
    top = validate_form(LIB.get("ham_a"), dict.fromkeys(raw, "4"))
    assert top.computed == {"HAMATOT": "56"}
    assert validate_form(LIB.get("ham_a"), {**raw, "HAMA03": "5"}).errors[0].rule == "hard_max"


def test_bdi_ii_total():
    raw = {f"BDI{n:02d}": str(n % 4) for n in range(1, 22)}
    expected = sum(n % 4 for n in range(1, 22))  # 31
    result = validate_form(LIB.get("bdi_ii"), raw, complete=True)
    assert result.ok
    assert result.computed == {"BDITOT": str(expected)} == {"BDITOT": "31"}
    assert validate_form(LIB.get("bdi_ii"), dict.fromkeys(raw, "3")).computed == {
        "BDITOT": "63"}
    labels = [i.label for i in LIB.get("bdi_ii").items]
    assert labels[0] == "Item 1 score" and labels[20] == "Item 21 score"


@pytest.mark.parametrize(("weight", "height", "bmi"), [
    ("70", "175", "22.9"),     # 70 / 1.75² = 22.857
    ("82.5", "180", "25.5"),   # 25.463
    ("45.0", "160", "17.6"),   # 17.578
    ("100.3", "165", "36.8"),  # 36.841
    ("54.4", "170", "18.8"),   # 18.823
])
def test_bmi_is_weight_over_height_squared_to_one_decimal(weight, height, bmi):
    result = validate_form(LIB.get("vital_signs"), {"WEIGHT": weight, "HEIGHT": height})
    assert result.computed == {"BMI": bmi}


def test_bmi_is_empty_without_height_and_queried_when_extreme():
    form = LIB.get("vital_signs")
    assert validate_form(form, {"WEIGHT": "70"}).computed == {}
    heavy = validate_form(form, {"WEIGHT": "160", "HEIGHT": "150"})  # 71.1
    assert heavy.computed == {"BMI": "71.1"}
    assert {(w.item_id, w.rule) for w in heavy.warnings} >= {("BMI", "soft_max")}


def test_computed_values_cannot_be_typed_over():
    result = validate_form(LIB.get("vital_signs"), {"WEIGHT": "70", "HEIGHT": "175",
                                                    "BMI": "99.9"})
    assert result.values["BMI"] == "22.9" and result.ok


ALL_MET = {"IE_AGE": "Y", "IE_STROKE": "Y", "IE_ONSET": "Y", "IE_NIHSS": "Y",
           "IE_CONSENT": "Y", "EX_ENDO": "N", "EX_PSYCH": "N", "EX_ANX": "N", "EX_MALIG": "N"}


def test_eligible_when_every_inclusion_is_yes_and_every_exclusion_no():
    form = LIB.get("eligibility")
    man = validate_form(form, {**ALL_MET, "SEX": "M"}, complete=True)
    assert man.ok and man.computed == {"ELIGIBLE": "Y"}
    assert man.hidden == {"EX_PREG", "EX_LACT"}
    woman = validate_form(form, {**ALL_MET, "SEX": "F", "EX_PREG": "N", "EX_LACT": "N"},
                          complete=True)
    assert woman.ok and woman.computed == {"ELIGIBLE": "Y"}


@pytest.mark.parametrize(("change", "expected"), [
    ({"IE_CONSENT": "N"}, "N"),
    ({"IE_AGE": "N"}, "N"),
    ({"EX_MALIG": "Y"}, "N"),
    ({"EX_ANX": "Y"}, "N"),
    ({"SEX": "F", "EX_PREG": "Y", "EX_LACT": "N"}, "N"),
    ({"SEX": "F", "EX_PREG": "N", "EX_LACT": "Y"}, "N"),
    ({"SEX": "M", "EX_PREG": "Y"}, "Y"),  # hidden for men: dropped, not counted
])
def test_not_eligible_when_any_criterion_fails(change, expected):
    raw = {**ALL_MET, "SEX": "M", **change}
    assert validate_form(LIB.get("eligibility"), raw).computed == {"ELIGIBLE": expected}


def test_eligibility_is_undecided_while_criteria_are_missing():
    form = LIB.get("eligibility")
    raw = dict(ALL_MET)
    del raw["IE_NIHSS"]
    assert validate_form(form, {**raw, "SEX": "M"}).computed == {}
    # ...but a single failed criterion already decides it
    assert validate_form(form, {**raw, "SEX": "M", "EX_MALIG": "Y"}).computed == {
        "ELIGIBLE": "N"}
    # a woman whose pregnancy status is not yet answered is undecided
    assert validate_form(form, {**ALL_MET, "SEX": "F"}).computed == {}
