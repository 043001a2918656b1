"""The rows of a subject new to this database (the subject, its visits, its forms), built as
plain objects and inserted with one executemany each, without ORM objects.

A subject the file brings new has no local history to merge with, so its rows are complete
before they are written; the ORM's unit of work would cost more than the merge itself.
"""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from crf_app.domain.protocol import Protocol
from crf_app.domain.subjects import schedule
from crf_app.services.odm_import.bulk import RawInsert, RawSelect
from crf_app.storage.models import FormInstance, Subject, Visit

_SUBJECT = ("study_id", "site_id", "screening_number", "initials", "birth_year", "sex", "arm",
            "consent_date", "enrolled_on", "baseline_date", "status", "status_reason",
            "status_date", "metadata_version", "row_version")
_VISIT = ("subject_id", "visit_code", "sequence", "planned_date", "window_start", "window_end",
          "actual_date", "status", "deviation", "row_version")
_FORM = ("visit_id", "form_id", "form_version", "status", "updated_at", "updated_by",
         "row_version")


class NewRows:
    """Inserts the rows of new subjects; the plain objects stand in for ORM ones."""

    def __init__(self, s: Session, study_id: int, protocol: Protocol):
        self.s, self.study_id, self.protocol = s, study_id, protocol
        self._subjects = RawInsert(s, Subject.__table__, _SUBJECT)
        self._visits = RawInsert(s, Visit.__table__, _VISIT)
        self._forms = RawInsert(s, FormInstance.__table__, _FORM)
        self._subject_id = RawSelect(s, select(Subject.id).where(
            Subject.study_id == bindparam("study"), Subject.screening_number == bindparam("sn")))
        self._visit_ids = RawSelect(s, select(Visit.visit_code, Visit.id).where(
            Visit.subject_id == bindparam("subject")))
        self._form_ids = RawSelect(s, select(
            FormInstance.visit_id, FormInstance.form_id, FormInstance.id).join(Visit).where(
            Visit.subject_id == bindparam("subject")))

    def subject(self, screening_number: str, site_id: int, values: dict[str, Any]
                ) -> SimpleNamespace:
        """Insert the subject (its record's values); its visits follow the schedule."""
        subj = SimpleNamespace(
            id=None, study_id=self.study_id, site_id=site_id,
            screening_number=screening_number, initials=values["initials"],
            birth_year=values["birth_year"], sex=values["sex"], arm=values["arm"],
            consent_date=values["consent_date"], enrolled_on=values["enrolled_on"],
            baseline_date=values.get("baseline_date"), status=values["status"],
            status_reason=values.get("status_reason") or "",
            status_date=values.get("status_date"), metadata_version=1, row_version=1)
        self._subjects.run([tuple(getattr(subj, c) for c in _SUBJECT)])
        [(subj.id,)] = self._subject_id.rows(study=self.study_id, sn=screening_number)
        subj.visits = [SimpleNamespace(
            id=None, subject_id=subj.id, visit_code=pv.code, sequence=pv.sequence,
            planned_date=pv.planned, window_start=pv.window_start, window_end=pv.window_end,
            actual_date=None, status="planned", deviation="", row_version=1)
            for pv in schedule(self.protocol, subj.baseline_date)]
        return subj

    def insert_visits(self, subj: SimpleNamespace) -> None:
        """Insert the subject's visits (their merged values) and learn their ids."""
        self._visits.run([tuple(getattr(v, c) for c in _VISIT) for v in subj.visits])
        ids = dict(self._visit_ids.rows(subject=subj.id))
        for v in subj.visits:
            v.id = ids[v.visit_code]

    @staticmethod
    def form(visit_id: int, form_id: str, version: int, status: str,
             updated_at: datetime | None, updated_by: str | None) -> SimpleNamespace:
        return SimpleNamespace(id=None, visit_id=visit_id, form_id=form_id,
                               form_version=version, status=status, updated_at=updated_at,
                               updated_by=updated_by, row_version=1)

    def insert_forms(self, subject_id: int, forms: list[SimpleNamespace]) -> None:
        """Insert the new forms of a new subject and learn their ids."""
        if not forms:
            return
        self._forms.run([tuple(getattr(f, c) for c in _FORM) for f in forms])
        ids = {(visit_id, form_id): fid
               for visit_id, form_id, fid in self._form_ids.rows(subject=subject_id)}
        for f in forms:
            f.id = ids[(f.visit_id, f.form_id)]
