"""The demo NA-Semax study: accounts of every role and subjects at different stages."""

from __future__ import annotations

import random
from datetime import date, timedelta

from crf_app.domain.protocol import Protocol
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment, SubjectStatus
from crf_app.services.accounts import login
from crf_app.services.context import StudyHandle, UserContext
from crf_app.services.forms import save_form
from crf_app.services.setup import NewUser, add_user, create_study
from crf_app.services.subjects import (
    end_participation,
    enroll_subject,
    record_visit_date,
    set_baseline,
    subject_detail,
)
from crf_app.storage.engine import Database

DEMO_PASSWORD = "Demo-pass-2026"
DEMO_ACCOUNTS: list[tuple[str, str, Role, str | None]] = [
    ("admin", "Demo Administrator", Role.ADMIN, None),
    ("coordinator", "Casey Coordinator", Role.COORDINATOR, "S01"),
    ("investigator", "Dr Ivo Investigator", Role.INVESTIGATOR, "S01"),
    ("monitor", "Morgan Monitor", Role.MONITOR, None),
    ("datamanager", "Dana Datamanager", Role.DATA_MANAGER, None),
]
_INITIALS = ["ABK", "CDL", "EFM", "GHN", "IJ-", "KLP", "MNR", "OPS", "QRT", "STU", "VWX", "YZA"]


_ELIGIBLE = {"IE_AGE": "Y", "IE_STROKE": "Y", "IE_ONSET": "Y", "IE_NIHSS": "Y",
             "IE_CONSENT": "Y", "EX_ENDO": "N", "EX_PSYCH": "N", "EX_ANX": "N", "EX_MALIG": "N"}
_NIHSS_MAX = {"NIH1A": 3, "NIH1B": 2, "NIH1C": 2, "NIH2": 2, "NIH3": 3, "NIH4": 3, "NIH5A": 4,
              "NIH5B": 4, "NIH6A": 4, "NIH6B": 4, "NIH7": 2, "NIH8": 2, "NIH9": 3, "NIH10": 2,
              "NIH11": 2}


def _vitals(rng: random.Random) -> dict[str, str]:
    return {"VSTIM": f"{rng.randint(8, 11):02d}:{rng.choice(['00', '15', '30', '45'])}",
            "SYSBP": str(rng.randint(118, 150)), "DIABP": str(rng.randint(70, 92)),
            "PULSE": str(rng.randint(60, 88)), "TEMP": f"{rng.uniform(36.2, 37.1):.1f}",
            "WEIGHT": f"{rng.uniform(58, 96):.1f}", "HEIGHT": str(rng.randint(155, 188))}


def _nihss(rng: random.Random, target: int) -> dict[str, str]:
    """Item scores within each item's range adding up to about `target`."""
    scores = dict.fromkeys(_NIHSS_MAX, 0)
    items = list(_NIHSS_MAX)
    while sum(scores.values()) < target:
        item = rng.choice(items)
        if scores[item] < _NIHSS_MAX[item]:
            scores[item] += 1
    return {k: str(v) for k, v in scores.items()}


def _dosing_and_aes(ctx: UserContext, sid: int, i: int, baseline: date, today: date,
                    rng: random.Random) -> None:
    """Usual days of dosing from baseline (a missed day now and then) and a few AEs."""
    from datetime import time

    from crf_app.domain.adverse_events import AeInput
    from crf_app.domain.dosing import DoseInput
    from crf_app.services.adverse_events import record_adverse_event
    from crf_app.services.dosing import record_dose, record_usual_day

    last = min(today, baseline + timedelta(days=13))
    day = baseline
    while day <= last:
        if rng.random() < 0.08:
            record_dose(ctx, sid, DoseInput(date=day.isoformat(), missed=True,
                                            missed_reason="Subject forgot"))
        else:
            record_usual_day(ctx, sid, day, time(8, 0), f"LOT-26{(i % 3) + 1:02d}A")
        day += timedelta(days=1)
    if i % 4 == 0:
        record_adverse_event(ctx, sid, AeInput(
            term="NASAL_IRRITATION", location="RIGHT_NOSTRIL",
            start_date=(baseline + timedelta(days=1)).isoformat(),
            end_date=(baseline + timedelta(days=3)).isoformat(), severity="MILD", grade="1",
            serious="N", relationship="PROBABLE", action="NONE", outcome="RECOVERED"))
    if i % 4 == 1:
        record_adverse_event(ctx, sid, AeInput(
            term="HEADACHE", location="NOT_APPLICABLE",
            start_date=(baseline + timedelta(days=2)).isoformat(), ongoing=True,
            severity="MODERATE", grade="2", serious="N", relationship="POSSIBLE",
            action="NONE", outcome="RECOVERING", treatment="Paracetamol 500 mg"))
    if i == 11:
        record_adverse_event(ctx, sid, AeInput(
            term="DIZZINESS", location="NOT_APPLICABLE", start_date=today.isoformat(),
            ongoing=True, severity="SEVERE", grade="3", serious="Y",
            criteria=("HOSPITALISATION",), relationship="UNLIKELY", action="INTERRUPTED",
            outcome="NOT_RECOVERED", treatment="Admitted for observation"))


def create_demo_study(db: Database, protocol: Protocol, forms: dict, *,
                      subjects: int = 12, today: date | None = None) -> StudyHandle:
    """Create the demo study and fill it; every write goes through the services (audited)."""
    admin = DEMO_ACCOUNTS[0]
    study = create_study(db, protocol, forms, is_demo=True,
                         admin=NewUser(admin[0], admin[1], admin[2], DEMO_PASSWORD))
    admin_ctx = login(study, admin[0], DEMO_PASSWORD)
    for username, full_name, role, site in DEMO_ACCOUNTS[1:]:
        add_user(db, admin_ctx.user.actor, NewUser(username, full_name, role, DEMO_PASSWORD, site))
    inv = login(study, "investigator", DEMO_PASSWORD)
    # The demo investigator may work at every site, so the demo can fill them all.
    inv = UserContext(study, type(inv.user)(inv.user.id, inv.user.username, inv.user.full_name,
                                            inv.user.role, None))
    populate(inv, subjects, today or date.today())
    return study


def populate(ctx: UserContext, n: int, today: date, seed: int = 7) -> list[int]:
    """Enrol `n` subjects spread over sites and stages; returns their ids."""
    rng = random.Random(seed)
    protocol = ctx.study.protocol
    sites = [s.code for s in protocol.sites]
    arms = [a.code for a in protocol.arms]
    stages = ["screening", "screen_failed", "baseline", "d7", "d14", "completed", "withdrawn",
              "d7_late", "d14", "completed", "baseline", "d7"]
    ids = []
    for i in range(n):
        stage = stages[i % len(stages)]
        site = sites[i % len(sites)]
        days_ago = {"screening": 3, "screen_failed": 10, "baseline": 2, "d7": 9, "d7_late": 12,
                    "d14": 16, "completed": 40, "withdrawn": 20}[stage]
        consent = today - timedelta(days=days_ago + 5)
        baseline = None if stage in ("screening", "screen_failed") else today - timedelta(
            days=days_ago)
        sid = enroll_subject(ctx, Enrollment(
            screening_number=f"{site}-{i + 1:03d}", site=site,
            initials=_INITIALS[i % len(_INITIALS)], birth_year=rng.randint(1945, 1985),
            sex=rng.choice("FM"), arm=arms[i % len(arms)], consent_date=consent,
            enrolled_on=consent, baseline_date=None))
        ids.append(sid)
        detail = subject_detail(ctx, sid)
        scr = detail.visits[0].id
        record_visit_date(ctx, scr, consent + timedelta(days=2))
        sex = "F" if i % 3 == 0 else "M"
        eligibility = dict(_ELIGIBLE, SEX=sex, **({"EX_PREG": "N", "EX_LACT": "N"}
                                                  if sex == "F" else {}))
        if stage == "screen_failed":
            eligibility["EX_ANX"] = "Y"  # an anxiety disorder: screen failure
        if stage != "screening":
            save_form(ctx, scr, "eligibility", eligibility, complete=True)
        if stage == "screen_failed":
            continue
        save_form(ctx, scr, "vital_signs", _vitals(rng), complete=True)
        save_form(ctx, scr, "nihss", _nihss(rng, 12), complete=True)
        if baseline is None:
            continue
        set_baseline(ctx, sid, baseline)
        visits = subject_detail(ctx, sid).visits
        for v in visits[1:]:
            if v.planned_date is None or v.planned_date > today:
                break
            actual = v.planned_date
            if stage == "d7_late" and v.code == "D7":
                actual = v.planned_date + timedelta(days=3)  # a protocol deviation
            if actual > today:
                break
            record_visit_date(ctx, v.id, actual)
            vitals = _vitals(rng)
            if i == 3 and v.code == "D7":
                vitals["SYSBP"] = "188"  # above the soft limit: an automatic query
            save_form(ctx, v.id, "vital_signs", vitals, complete=True)
            save_form(ctx, v.id, "nihss", _nihss(rng, max(2, 12 - v.day // 3)), complete=True)
        _dosing_and_aes(ctx, sid, i, baseline, today, rng)
        if stage == "completed":
            end_participation(ctx, sid, SubjectStatus.COMPLETED, today - timedelta(days=9),
                              "Completed the follow-up visit per protocol")
        elif stage == "withdrawn":
            end_participation(ctx, sid, SubjectStatus.WITHDRAWN, today - timedelta(days=5),
                              "Subject withdrew consent")
    return ids
