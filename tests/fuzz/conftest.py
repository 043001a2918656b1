"""Shared set-up of the fuzz tests: a small valid ODM export and an empty laptop to merge into.

The fuzz tests are bounded (max_examples, no deadline) so that the whole folder runs in about
a minute on two cores; run with `--hypothesis-seed=N` to replay a failure, and with
CRF_FUZZ_SCALE=10 (say) to search ten times longer.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from tests.interchange.odm_helpers import make_laptop


def examples(n: int) -> int:
    """`n` hypothesis examples, times $CRF_FUZZ_SCALE (default 1)."""
    return max(1, int(n * float(os.environ.get("CRF_FUZZ_SCALE", "1"))))


@dataclass(frozen=True)
class OdmFixture:
    valid: bytes  # a transactional export of laptop A (five subjects, doses, an AE, a table)
    empty_laptop: Path  # a closed, pristine laptop B database (same protocol, no subjects)
    folder: Path

    def __repr__(self) -> str:  # keep hypothesis reports short
        return f"OdmFixture({len(self.valid)} bytes, {self.folder})"


def copy_db(src: Path, dst: Path) -> Path:
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        s.backup(d)
    finally:
        s.close()
        d.close()
    return dst


@pytest.fixture(scope="session")
def odm(tmp_path_factory, protocol, form_definitions) -> OdmFixture:
    from crf_app.services.demo import populate
    from crf_app.services.forms import save_form
    from crf_app.services.odm_export import export_odm
    from crf_app.services.subjects import list_subjects, subject_detail

    folder = tmp_path_factory.mktemp("odm-fuzz")
    a = make_laptop(folder / "a.db", protocol, form_definitions)
    populate(a.inv, 5, date.today())  # every stage to day 14: forms, doses, an AE
    sid = list_subjects(a.inv)[0].id
    scr = subject_detail(a.inv, sid).visits[0].id
    save_form(a.inv, scr, "conmeds", {"medications": [
        {"CMTRT": "Aspirin", "CMINDC": "Stroke prevention", "CMROUTE": "PO",
         "CMSTDTC": "2024-05", "CMONGO": "Y"},
        {"CMTRT": "Ramipril", "CMINDC": "Hypertension", "CMROUTE": "PO", "CMSTDTC": "2023",
         "CMONGO": "N", "CMENDTC": "2025-01-02"}]}, complete=True)
    export_odm(a.dm, folder / "valid.xml")
    a.study.close()
    b = make_laptop(folder / "b.db", protocol, form_definitions)
    b.study.close()
    return OdmFixture((folder / "valid.xml").read_bytes(), folder / "b.db", folder)
