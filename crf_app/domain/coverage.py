"""What a signature or a source data verification covers, said once.

A signature is invalidated, and a verification cleared, by a change to the content it covers,
and by nothing else:

- a **form** signature covers that form's values and status;
- a **visit** signature covers the values and status of every form of the visit, and the
  visit's date;
- a **casebook** signature covers the subject's whole record: every form, every visit date,
  the adverse-event log, the dosing log, the baseline date, the arm and the subject's status;
- a **verification** (SDV) covers the values and status of its one form.

The write pipeline (`crf_app.services.pipeline`) describes every change it makes as a
`ContentChange` and voids exactly what `covers` says; the ODM merge does the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Content(StrEnum):
    """The kinds of study content a change can touch."""

    FORM = "form"  # an item value or the status of a form instance
    VISIT_DATE = "visit_date"  # the date a visit took place (and so its window deviation)
    SUBJECT = "subject"  # baseline date, arm, status and the other subject-record fields
    ADVERSE_EVENT = "adverse_event"  # a row of the AE log, new or corrected
    DOSE = "dose"  # a row of the dosing log, new or corrected


@dataclass(frozen=True)
class ContentChange:
    """One change to a subject's content: which subject, and for forms and visit dates
    which visit and form instance."""

    kind: Content
    subject_id: int
    visit_id: int | None = None
    form_instance_id: int | None = None


@dataclass(frozen=True)
class Cover:
    """What a signature (scope form / visit / casebook) or a verification ("verification")
    is attached to."""

    scope: str
    subject_id: int
    visit_id: int | None = None
    form_instance_id: int | None = None


SIGNATURE_SCOPES = ("form", "visit", "casebook")


def covers(cover: Cover, change: ContentChange) -> bool:
    """Whether `change` alters content that `cover` signed or verified."""
    if cover.subject_id != change.subject_id:
        return False
    if cover.scope == "casebook":
        return True
    if cover.scope in ("form", "verification"):
        return (change.kind is Content.FORM
                and change.form_instance_id == cover.form_instance_id)
    if cover.scope == "visit":
        return (change.kind in (Content.FORM, Content.VISIT_DATE)
                and change.visit_id == cover.visit_id)
    raise ValueError(f"unknown signature scope {cover.scope!r}")


def covered_by_any(cover: Cover, changes: list[ContentChange] | set[ContentChange]) -> bool:
    """Whether any of `changes` alters what `cover` covers."""
    return any(covers(cover, c) for c in changes)
