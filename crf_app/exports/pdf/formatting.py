"""How dates, times and empty values are written in the PDFs."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

DASH = "—"


def fmt_date(value: date | None) -> str:
    return value.isoformat() if value else DASH


def fmt_time(value: time | None) -> str:
    return value.strftime("%H:%M") if value else ""


def fmt_utc(value: datetime | None, seconds: bool = False) -> str:
    """A timestamp in UTC, e.g. '2026-11-24 10:00 UTC' (naive values are taken as UTC)."""
    if value is None:
        return DASH
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "")) + " UTC"
