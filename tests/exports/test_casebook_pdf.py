"""The completed casebook PDF, read back with pypdf."""

import re
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pytest
from pypdf.generic import NameObject

from crf_app.domain.adverse_events import AdverseEvent
from crf_app.domain.casebook import SignatureRecord, casebook_digest
from crf_app.domain.dosing import DoseRecord
from crf_app.exports.pdf import RENDERER
from crf_app.services import casebook as casebook_service
from crf_app.services.casebook import build_casebook
from tests.exports.conftest import (
    CYRILLIC,
    GREEK,
    LONG_COMMENT,
    LONG_TOKEN,
    MARKUP_TEXT,
    read_pdf,
    squash,
)


@pytest.fixture
def casebook(subjects, monitor):
    return build_casebook(monitor, subjects.rich)


@pytest.fixture
def pdf(casebook):
    return read_pdf(RENDERER.casebook(casebook, "A4"))


def test_values_units_flags_and_not_applicable_are_printed(pdf):
    text = pdf.flat
    for expected in ("188 mmHg ▲", "above the expected maximum 180 mmHg", "12.5 pg/mL ▲",
                     "82 mmHg", "36.6 °C", "24.7 kg/m²", "Not applicable", "White; Other",
                     "Atorvastatin", "Hypercholesterolaemia", "2026-09-25", "12 years",
                     "Visit 3 days late", "No adverse events recorded",
                     "No dosing recorded", "No electronic signatures"):
        assert expected in text, expected
    assert "NSX — NA-Semax 0.1% intranasal" in pdf.pages[0]
    assert "Monitor Test (mon, Monitor)" in pdf.pages[0]


def test_page_count_is_sensible_and_every_page_has_header_and_page_x_of_y(pdf, casebook):
    total = len(pdf.pages)
    forms = sum(len(v.forms) for v in casebook.visits)
    assert forms == 9
    assert forms + 3 <= total <= 40
    digest = casebook_digest(casebook)
    for number, page in enumerate(pdf.pages, start=1):
        assert "Subject S01-001 · Site S01 · NASEMAX-PSR-01" in page, number
        assert f"Page {number} of {total}" in page, number
        assert f"SHA-256 of the exported data: {digest}" in page, number
        assert "Generated 2026-11-24 10:00 UTC" in page, number


def test_header_names_the_form_and_version_on_its_pages(pdf):
    labs = [p for p in pdf.pages if "Sample collection" in p]
    assert len(labs) == 1 and "SCR · Laboratory tests (v1)" in labs[0]
    assert any("D7 · Vital signs (v1)" in p for p in pdf.pages)


def test_outline_has_a_bookmark_per_visit_and_form(pdf, casebook):
    outline = pdf.outline()
    expected = [(0, "Cover"), (0, "Visit schedule")]
    for visit in casebook.visits:
        expected.append((0, f"Visit {visit.code} — {visit.name}"))
        expected += [(1, form.title) for form in visit.forms]
    expected += [(0, t) for t in ("Adverse events", "Dosing log", "Queries",
                                  "Signature manifest", "Audit trail annex")]
    assert outline == expected
    # each form's bookmark points at the page whose header names that form
    reader = pdf.reader
    flat = [e for e in reader.outline if not isinstance(e, list)]
    visit_scr = flat[2]
    assert reader.get_destination_page_number(visit_scr) == next(
        i for i, p in enumerate(pdf.pages) if "Visit SCR — Screening" in p)


def test_unicode_text_is_extractable(pdf):
    assert "TNF-α" in pdf.flat
    assert GREEK in pdf.flat
    assert CYRILLIC in pdf.flat


def test_user_markup_is_printed_literally(pdf):
    assert MARKUP_TEXT in pdf.flat


def test_a_5000_character_comment_is_wrapped_over_pages(pdf):
    assert len(LONG_COMMENT) == 4997
    text = pdf.text
    assert "BEGIN-COMMENT" in text and "END-COMMENT" in text
    assert LONG_TOKEN in squash(text)  # a 300-character word is broken, not cut
    words = [w for w in LONG_COMMENT.split() if w.startswith("word")]
    found = re.findall(r"word\d{4}", text)
    assert found[:len(words)] == words  # every word, in order (the query thread comes first)


def test_fonts_are_embedded_unicode_fonts_only(pdf):
    for page in pdf.reader.pages:
        for font in page["/Resources"]["/Font"].values():
            font = font.get_object()
            assert font["/Subtype"] == NameObject("/TrueType"), font["/BaseFont"]
            assert "DejaVu" in font["/BaseFont"]
            assert "/FontFile2" in font["/FontDescriptor"].get_object()


def test_audit_annex_and_query_thread(pdf):
    text = pdf.flat
    assert "75 → 76" in text and "transcription error" in text
    assert "open → answered" in text and "answered → closed" in text
    assert "Checked against the source: 72 is right." in text
    assert "Systolic BP: 188 mmHg is above the expected maximum 180 mmHg" in text


def test_letter_and_a4_page_sizes(casebook):
    a4 = read_pdf(RENDERER.casebook(casebook, "A4")).reader.pages[0].mediabox
    letter = read_pdf(RENDERER.casebook(casebook, "Letter")).reader.pages[0].mediabox
    assert (round(float(a4.width)), round(float(a4.height))) == (595, 842)
    assert (round(float(letter.width)), round(float(letter.height))) == (612, 792)
    with pytest.raises(ValueError, match="A4 or Letter"):
        RENDERER.casebook(casebook, "A3")


def test_same_data_gives_the_same_pdf(casebook):
    assert RENDERER.casebook(casebook, "A4") == RENDERER.casebook(casebook, "A4")


def test_logs_and_signatures_from_the_hooks(monkeypatch, subjects, monitor):
    ae = AdverseEvent("NASAL_BURNING", "", "LEFT_NOSTRIL", date(2026, 10, 6), time(8, 30),
                      date(2026, 10, 8), False, "MODERATE", 2, True, ("HOSPITALISATION",),
                      "PROBABLE", "INTERRUPTED", "RECOVERED", "Saline <spray> & rest")
    doses = [DoseRecord(date(2026, 10, d), time(9), Decimal("0.1"), 2, "LEFT", "INTRANASAL",
                        "LOT-7", "SELF") for d in range(5, 12)]
    signature = SignatureRecord("Dr Ivo Investigator", "inv", datetime(2026, 11, 20, 9, 5,
                                                                        tzinfo=UTC),
                                "I approve the data of this casebook", "Casebook S01-001")
    monkeypatch.setattr(casebook_service, "_adverse_events", lambda s, sid: [ae])
    monkeypatch.setattr(casebook_service, "_doses", lambda s, sid: doses)
    monkeypatch.setattr(casebook_service, "_signatures", lambda s, sid: [signature])
    text = read_pdf(RENDERER.casebook(build_casebook(monitor, subjects.rich), "A4")).flat
    assert "Nasal burning Left nostril" in text
    assert "Yes: Requires or prolongs hospitalisation" in text
    assert "Probably related" in text and "Saline <spray> & rest" in text
    assert "Compliance: Course 1 (2026-10-05 to 2026-10-11): 14 of 14 planned" in text
    assert "LOT-7" in text and "0.1" in text
    assert "Dr Ivo Investigator" in text and "2026-11-20 09:05:00 UTC" in text
    assert "I approve the data of this casebook" in text
