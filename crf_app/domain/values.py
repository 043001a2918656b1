"""The text form of a stored value, said once: what the audit trail records, the ODM file
carries and the replay compares."""

from __future__ import annotations

from datetime import date, datetime, time


def value_text(value: object) -> str | None:
    """A value as text: None stays None, booleans are Y/N, dates and times ISO 8601, anything
    else `str`."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, date | datetime | time):
        return value.isoformat()
    return str(value)


def value_text_or_none(value: object) -> str | None:
    """`value_text`, where '' (an empty text field) is no value, as None is."""
    text = value_text(value)
    return None if text == "" else text
