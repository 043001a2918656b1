"""Typed tables of the two logs: adverse events (CDASH AE) and dosing records (CDASH EX).

Dates are dates, times of day are times, timestamps are UTC (`UTCDateTime`), the dose is an
exact decimal (stored as its canonical text: SQLite has no decimal type, and a float would
turn 0.1 mg into 0.1000000000000000055…). Each row carries its own `row_version` so a stale
copy is refused instead of overwriting someone else's save.
"""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

from sqlalchemy import Boolean, Date, ForeignKey, Integer, String, Text, Time, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from crf_app.storage.models import Base, UTCDateTime, utcnow


class DecimalText(TypeDecorator[Decimal]):
    """An exact decimal stored as text ('0.1'); returns Decimal, refuses floats."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError("DecimalText stores Decimal values only (never floats)")
        return format(value.normalize(), "f")

    def process_result_value(self, value: str | None, dialect):  # type: ignore[override]
        return None if value is None else Decimal(value)


class AdverseEvent(Base):
    """One adverse event of a subject (CDASH AE; CTCAE grade; SAE reporting clock)."""

    __tablename__ = "adverse_event"
    __table_args__ = (UniqueConstraint("subject_id", "sequence"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subject.id"), index=True)
    sequence: Mapped[int] = mapped_column(Integer)  # AESPID: 1, 2, … per subject
    term: Mapped[str] = mapped_column(String(40))  # AEDECOD (study codelist code)
    verbatim: Mapped[str] = mapped_column(Text, default="")  # AETERM as reported
    location: Mapped[str] = mapped_column(String(20))  # AELOC
    start_date: Mapped[date] = mapped_column(Date)  # AESTDAT
    start_time: Mapped[time | None] = mapped_column(Time)  # AESTTIM
    end_date: Mapped[date | None] = mapped_column(Date)  # AEENDAT
    ongoing: Mapped[bool] = mapped_column(Boolean, default=False)  # AEONGO
    severity: Mapped[str] = mapped_column(String(10))  # AESEV
    grade: Mapped[int] = mapped_column(Integer)  # AETOXGR (CTCAE 1–5)
    serious: Mapped[bool] = mapped_column(Boolean, default=False)  # AESER
    # Seriousness criteria, one flag each as CDASH has them.
    sae_death: Mapped[bool] = mapped_column(Boolean, default=False)  # AESDTH
    sae_life_threatening: Mapped[bool] = mapped_column(Boolean, default=False)  # AESLIFE
    sae_hospitalisation: Mapped[bool] = mapped_column(Boolean, default=False)  # AESHOSP
    sae_disability: Mapped[bool] = mapped_column(Boolean, default=False)  # AESDISAB
    sae_congenital_anomaly: Mapped[bool] = mapped_column(Boolean, default=False)  # AESCONG
    sae_medically_important: Mapped[bool] = mapped_column(Boolean, default=False)  # AESMIE
    # AEREL; None until the investigator has assessed causality.
    relationship: Mapped[str | None] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(20))  # AEACN
    outcome: Mapped[str] = mapped_column(String(30))  # AEOUT
    treatment: Mapped[str] = mapped_column(Text, default="")  # AECONTRT (what was given)
    # Saved-but-flagged findings (late onset, withdrawn subject): rule names, and sentences.
    flags: Mapped[str] = mapped_column(String(120), default="")
    flag_text: Mapped[str] = mapped_column(Text, default="")
    # SAE clock: when the event was first saved as serious, and when the sponsor had the report.
    sae_recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sae_reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_by: Mapped[str | None] = mapped_column(String(64))
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": row_version}


class DosingRecord(Base):
    """One administration of study drug, or one missed dose (CDASH EX)."""

    __tablename__ = "dosing_record"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subject.id"), index=True)
    dose_date: Mapped[date] = mapped_column(Date, index=True)  # EXSTDAT
    dose_time: Mapped[time | None] = mapped_column(Time)  # EXSTTIM
    dose_mg: Mapped[Decimal | None] = mapped_column(DecimalText)  # EXDOSE per instillation
    dose_unit: Mapped[str] = mapped_column(String(10), default="mg")  # EXDOSU
    instillations: Mapped[int] = mapped_column(Integer, default=0)
    nostril: Mapped[str] = mapped_column(String(20), default="")  # EXLOC
    route: Mapped[str] = mapped_column(String(20), default="")  # EXROUTE
    lot: Mapped[str] = mapped_column(String(40), default="")  # EXLOT
    given_by: Mapped[str] = mapped_column(String(10), default="")
    missed: Mapped[bool] = mapped_column(Boolean, default=False)  # EXOCCUR = N
    missed_reason: Mapped[str] = mapped_column(Text, default="")  # EXREASOC
    findings: Mapped[str] = mapped_column(String(200), default="")  # rules that raised queries
    warnings: Mapped[str] = mapped_column(String(200), default="")  # rules shown, no query
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_by: Mapped[str | None] = mapped_column(String(64))
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": row_version}
