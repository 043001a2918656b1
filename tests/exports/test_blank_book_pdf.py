"""The blank CRF book and the annotated CRF, read back with pypdf."""

import pytest

from crf_app.exports.pdf import RENDERER
from crf_app.services.casebook import build_blank_book
from crf_app.services.forms import form_library
from tests.exports.conftest import read_pdf


@pytest.fixture
def book(study, monitor):
    return build_blank_book(monitor)


@pytest.fixture
def blank(book):
    return read_pdf(RENDERER.blank_book(book, False, "A4"))


@pytest.fixture
def annotated(book):
    return read_pdf(RENDERER.blank_book(book, True, "Letter"))


def test_blank_book_prints_every_form_of_every_visit(blank, study):
    protocol = study.protocol
    lib = form_library(study)
    outline = blank.outline()
    expected = [(0, "Cover"), (0, "Schedule of assessments")]
    for visit in protocol.visits:
        expected.append((0, f"Visit {visit.code} — {visit.name}"))
        expected += [(1, lib.get(f).title) for f in visit.forms]
    assert outline == expected
    for visit in protocol.visits:
        for form_id in visit.forms:
            header = f"{visit.code} · {lib.get(form_id).title} (v1)"
            assert any(header in page for page in blank.pages), header


def test_blank_book_shows_codes_units_limits_branching_and_boxes(blank):
    text = blank.flat
    for expected in ("Female (F)", "Not Hispanic or Latino (NHL)", "mmHg", "kg/m²",
                     "Permitted 40–300 mmHg; expected 90–180 mmHg",
                     "reference range ≤ 8.1 pg/mL", "TNF-α",
                     "only if “Ongoing” is No", "Only if “Race” includes Other",
                     "Only if “Completion status” is not Completed", "PO = Oral",
                     "Computed by crf-app after transcription", "Transcribed into crf-app",
                     "Subject number", "yyyy"):
        assert expected in text, expected
    assert "CMENDTC" not in text  # variable names only in the annotated CRF


def test_every_page_has_the_running_header_and_page_x_of_y(blank, annotated):
    for pdf in (blank, annotated):
        total = len(pdf.pages)
        for number, page in enumerate(pdf.pages, start=1):
            assert "NASEMAX-PSR-01 ·" in page and f"Page {number} of {total}" in page
            assert "SHA-256 of the form definitions:" in page


def test_annotated_crf_names_every_variable_once_per_form(annotated, study):
    lib = form_library(study)
    text = annotated.flat
    for form in lib.forms.values():
        assert form.title in text
        for item in form.items:
            assert item.id in text, item.id
    assert "SEX: F, M" in text and "Route (CMROUTE, codelist ROUTE): PO = Oral" in text
    assert "show_if: CMONGO == \"N\"" in text
    assert "ELIGIBLE = IE_AGE == \"Y\"" in text  # the long derivation under the form
    assert [t for level, t in annotated.outline() if level == 0][2:] == [
        lib.get(f).title for f in study.protocol.form_ids()]
    assert round(float(annotated.reader.pages[0].mediabox.width)) == 612
