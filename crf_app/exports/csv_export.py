"""CSV export for analysis: one wide file per form, one long file per repeating table.

    subjects.csv                 one row per subject (site, arm, sex, year of birth, dates, status)
    <form>.csv                   one row per subject × visit where the form was saved; one column
                                 per item outside repeating sections
    <form>__<section>.csv        one row per row of a repeating section (subject, visit, ROW)
    data_dictionary.csv          every item: type, unit, limits, codes (labels of the codes)

Values are the stored canonical values (codes, ISO dates, decimals with a point), UTF-8, with a
header row. Rows are written as the plan's subjects come (crf_app.services.csv_service reads
them in batches); nothing here reads the database.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

from crf_app.domain.errors import CrfError
from crf_app.domain.forms import FormDef, FormLibrary
from crf_app.domain.forms.dictionary import dictionary_csv
from crf_app.domain.protocol import Protocol

SUBJECT_COLUMNS = ("SITE", "SUBJECT", "ARM", "SEX", "BIRTH_YEAR", "CONSENT_DATE",
                   "ENROLLED_ON", "BASELINE_DATE", "STATUS")
FORM_KEYS = ("SITE", "SUBJECT", "VISIT", "VISIT_DATE", "FORM_VERSION", "FORM_STATUS")
ROW_KEYS = ("SITE", "SUBJECT", "VISIT", "ROW")


@dataclass(frozen=True)
class CsvForm:
    """One saved form of one visit: its values keyed by (item id, row)."""

    form_id: str
    form_version: int
    status: str
    visit_code: str
    visit_date: date | None
    values: dict[tuple[str, int], str]


@dataclass
class CsvSubject:
    screening_number: str
    site: str
    arm: str
    sex: str
    birth_year: int
    consent_date: date
    enrolled_on: date
    baseline_date: date | None
    status: str
    forms: list[CsvForm] = field(default_factory=list)


@dataclass
class CsvPlan:
    study_oid: str
    protocol: Protocol
    library: FormLibrary
    subject_count: int
    subjects: Iterator[CsvSubject]

    def close(self) -> None:
        close = getattr(self.subjects, "close", None)
        if close is not None:
            close()


class CsvCancelled(CrfError):
    """The user cancelled the CSV export; the files written so far were deleted."""


@dataclass
class CsvSummary:
    folder: Path
    files: list[Path] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    subjects: int = 0


class _Files:
    def __init__(self, folder: Path):
        self.folder = folder
        self.handles: dict[str, tuple[IO[str], Any]] = {}
        self.paths: list[Path] = []
        self.rows: dict[str, int] = {}

    def open(self, name: str, columns: list[str]) -> None:
        path = self.folder / f"{name}.csv"
        fh = _part(path).open("w", encoding="utf-8", newline="")
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        self.handles[name] = (fh, writer)
        self.paths.append(path)
        self.rows[name] = 0

    def row(self, name: str, values: list[Any]) -> None:
        self.handles[name][1].writerow(["" if v is None else v for v in values])
        self.rows[name] += 1

    def close(self) -> None:
        for fh, _ in self.handles.values():
            fh.close()

    def publish(self) -> None:
        """Every file complete: durable on disk, then renamed to its final name."""
        for path in self.paths:
            with _part(path).open("rb") as fh:
                os.fsync(fh.fileno())
        for path in self.paths:
            os.replace(_part(path), path)

    def discard(self) -> None:
        self.close()
        for path in self.paths:
            _part(path).unlink(missing_ok=True)


def _part(path: Path) -> Path:
    """Files are written under a temporary name, so a crash never leaves a partial .csv."""
    return path.with_name(path.name + ".part")


def _plain(form: FormDef) -> list[str]:
    return [i.id for s in form.sections if not s.repeating for i in s.items]


def write_csv(folder: Path, plan: CsvPlan, *,
              progress: Callable[[int, int], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> CsvSummary:
    """Write every file into `folder` (created if needed); returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    files = _Files(folder)
    forms = sorted(plan.library.forms.values(), key=lambda f: f.id)
    n = 0
    try:
        files.open("subjects", list(SUBJECT_COLUMNS))
        for form in forms:
            files.open(form.id, [*FORM_KEYS, *_plain(form)])
            for section in form.sections:
                if section.repeating:
                    files.open(f"{form.id}__{section.id}",
                               [*ROW_KEYS, *(i.id for i in section.items)])
        for subj in plan.subjects:
            if cancelled is not None and cancelled():
                raise CsvCancelled("CSV export cancelled; the files were deleted")
            files.row("subjects", [subj.site, subj.screening_number, subj.arm, subj.sex,
                                   subj.birth_year, subj.consent_date, subj.enrolled_on,
                                   subj.baseline_date, subj.status])
            for f in subj.forms:
                form = plan.library.forms.get(f.form_id)
                if form is None:
                    continue
                keys = [subj.site, subj.screening_number, f.visit_code]
                files.row(form.id, [*keys, f.visit_date, f.form_version, f.status,
                                    *(f.values.get((i, 0)) for i in _plain(form))])
                for section in form.sections:
                    if not section.repeating:
                        continue
                    rows = sorted({r for (item, r) in f.values
                                   if item in {i.id for i in section.items}})
                    for r in rows:
                        files.row(f"{form.id}__{section.id}",
                                  [*keys, r + 1, *(f.values.get((i.id, r))
                                                   for i in section.items)])
            n += 1
            if progress is not None:
                progress(n, max(n, plan.subject_count))
        files.close()
        dictionary = folder / "data_dictionary.csv"
        files.paths.append(dictionary)
        _part(dictionary).write_text(dictionary_csv(plan.library), encoding="utf-8")
        files.publish()
    except BaseException:
        files.discard()
        raise
    return CsvSummary(folder, files.paths, files.rows, n)
