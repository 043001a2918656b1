"""A study with subjects whose data exercise every part of the PDFs: branching (not
applicable), soft-limit flags, repeating tables, Greek and Cyrillic text, markup characters, a
protocol deviation and a query thread with a 5,000-character message."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date

import pytest
from pypdf import PdfReader

from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.services import forms as fsvc
from crf_app.services import queries as qsvc
from crf_app.services import subjects as svc
from crf_app.services.context import UserContext
from tests.conftest import fixed_clock

MARKUP_TEXT = "Other <b>not bold</b> & Co"
GREEK = "NF-κB related inflammation"
CYRILLIC = "Головная боль, Кириллица"
LONG_TOKEN = "X" * 40 + "unbroken" + "Y" * 252  # a 300-character word
LONG_COMMENT = ("BEGIN-COMMENT " + LONG_TOKEN + " " + " ".join(
    f"word{i:04d}" for i in range(1000)))[:4985] + " END-COMMENT"
ELIGIBLE = {"IE_AGE": "Y", "IE_STROKE": "Y", "IE_ONSET": "Y", "IE_NIHSS": "Y",
            "IE_CONSENT": "Y", "SEX": "M", "EX_ENDO": "N", "EX_PSYCH": "N", "EX_ANX": "N",
            "EX_MALIG": "N"}
VITALS = {"VSTIM": "09:30", "SYSBP": "128", "DIABP": "82", "PULSE": "72", "TEMP": "36.6",
          "WEIGHT": "80.0", "HEIGHT": "180"}
NIHSS = {k: "0" for k in ("NIH1A", "NIH1B", "NIH1C", "NIH2", "NIH3", "NIH4", "NIH5A", "NIH5B",
                          "NIH6A", "NIH6B", "NIH7", "NIH8", "NIH9", "NIH10", "NIH11")}


@dataclass(frozen=True)
class Subjects:
    rich: int  # S01-001: everything
    plain: int  # S01-002: screening only
    other_site: int  # S02-003


def _all_sites(ctx: UserContext) -> UserContext:
    user = ctx.user
    return UserContext(ctx.study, type(user)(user.id, user.username, user.full_name, user.role,
                                             None), ctx.clock)


def visit_ids(ctx, subject_id) -> dict[str, int]:
    return {v.code: v.id for v in svc.subject_detail(ctx, subject_id).visits}


@pytest.fixture(autouse=True)
def _pdf_renderer():
    """What the app's entry point does: install the ReportLab renderer for the exports."""
    from crf_app.exports.pdf import RENDERER
    from crf_app.services import pdf_export

    pdf_export.use_renderer(RENDERER)
    yield
    pdf_export.use_renderer(None)


@pytest.fixture
def monitor(as_role):
    ctx = as_role(Role.MONITOR)
    ctx.clock = fixed_clock()
    return ctx


@pytest.fixture
def subjects(study, as_role, monitor) -> Subjects:
    inv = _all_sites(as_role(Role.INVESTIGATOR))
    inv.clock = fixed_clock()
    consent = date(2026, 10, 1)
    rich = svc.enroll_subject(inv, Enrollment("S01-001", "S01", "ABC", 1960, "M", "NSX",
                                              consent, consent))
    v = visit_ids(inv, rich)
    svc.record_visit_date(inv, v["SCR"], date(2026, 10, 3))
    fsvc.save_form(inv, v["SCR"], "eligibility", ELIGIBLE, complete=True)
    fsvc.save_form(inv, v["SCR"], "demographics", {
        "BRTHYR": "1960", "SEX": "M", "ETHNIC": "NHL", "RACE": ["WHITE", "OTHER"],
        "RACEOTH": MARKUP_TEXT, "EDUYRS": "12", "DOMHAND": "R"}, complete=True)
    fsvc.save_form(inv, v["SCR"], "vital_signs", dict(VITALS, SYSBP="188"), complete=True)
    fsvc.save_form(inv, v["SCR"], "labs", {
        "LBDAT": "2026-10-02", "LBFAST": "Y", "IL6": "3.0", "TNFA": "12.5", "GLUC": "5.5",
        "CHOL": "5.00", "LDL": "3.20", "HDL": "1.20"}, complete=True)
    fsvc.save_form(inv, v["SCR"], "medical_history", {
        "MH_STROKE": "N", "MH_HTN": "Y", "MH_DIAB": "N", "MH_AF": "N",
        "conditions": [{"MHTERM": f"{GREEK}; {CYRILLIC}", "MHSTDTC": "2019", "MHONGO": "Y"},
                       {"MHTERM": "Wrist fracture", "MHSTDTC": "2015-06", "MHONGO": "N",
                        "MHENDTC": "2015-09"}]}, complete=True)
    fsvc.save_form(inv, v["SCR"], "conmeds", {"medications": [
        {"CMTRT": "Atorvastatin", "CMINDC": "Hypercholesterolaemia", "CMDOSE": "20",
         "CMDOSU": "MG", "CMROUTE": "PO", "CMDOSFRQ": "QD", "CMSTDTC": "2020-01",
         "CMONGO": "Y"},
        {"CMTRT": "Ibuprofen", "CMINDC": "Headache after the index stroke, taken as needed",
         "CMDOSE": "400", "CMDOSU": "MG", "CMROUTE": "PO", "CMSTDTC": "2026-09-20",
         "CMONGO": "N", "CMENDTC": "2026-09-25"}]}, complete=True)
    fsvc.save_form(inv, v["SCR"], "nihss", dict(NIHSS, NIH1A="2", NIH5A="3"), complete=True)
    svc.set_baseline(inv, rich, date(2026, 10, 5))
    v = visit_ids(inv, rich)
    svc.record_visit_date(inv, v["BL"], date(2026, 10, 5))
    fsvc.save_form(inv, v["BL"], "vital_signs", VITALS, complete=True)
    svc.record_visit_date(inv, v["D7"], date(2026, 10, 15))  # 4 days late: a deviation
    fsvc.save_form(inv, v["D7"], "vital_signs", dict(VITALS, PULSE="75"), complete=True)
    fsvc.save_form(inv, v["D7"], "vital_signs", dict(VITALS, PULSE="76"), complete=True,
                   reason="transcription error")
    qid = qsvc.raise_query(monitor, v["SCR"], "vital_signs", "PULSE", LONG_COMMENT)
    qsvc.answer_query(inv, qid, f"Checked against the source: 72 is right. {CYRILLIC}")
    qsvc.close_query(monitor, qid, "Resolved")

    plain = svc.enroll_subject(inv, Enrollment("S01-002", "S01", "DEF", 1970, "F", "PBO",
                                               consent, consent))
    fsvc.save_form(inv, visit_ids(inv, plain)["SCR"], "vital_signs", VITALS, complete=True)
    other = svc.enroll_subject(inv, Enrollment("S02-003", "S02", "GHI", 1955, "F", "NSX",
                                               consent, consent))
    return Subjects(rich, plain, other)


@dataclass
class Pdf:
    reader: PdfReader
    pages: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.pages)

    @property
    def flat(self) -> str:
        """The text with every run of whitespace (line breaks from wrapping) as one space."""
        return " ".join(self.text.split())

    def outline(self) -> list[tuple[int, str]]:
        """(level, title) of every outline entry, in order."""
        out: list[tuple[int, str]] = []

        def walk(entries, level: int) -> None:
            for entry in entries:
                if isinstance(entry, list):
                    walk(entry, level + 1)
                else:
                    out.append((level, entry.title))
        walk(self.reader.outline, 0)
        return out


def read_pdf(data: bytes) -> Pdf:
    reader = PdfReader(io.BytesIO(data))
    return Pdf(reader, [page.extract_text() or "" for page in reader.pages])


def squash(text: str) -> str:
    """Text without any whitespace (wrapping puts line breaks anywhere)."""
    return "".join(text.split())
