"""The demo NA-Semax study: accounts of every role and subjects at different stages."""

from __future__ import annotations

import random
from datetime import date, timedelta

from crf_app.domain.protocol import Protocol
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment, SubjectStatus
from crf_app.services.accounts import login
from crf_app.services.context import StudyHandle, UserContext
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
        record_visit_date(ctx, detail.visits[0].id, consent + timedelta(days=2))
        if stage == "screen_failed":
            end_participation(ctx, sid, SubjectStatus.SCREEN_FAILED, consent + timedelta(days=2),
                              "Exclusion criterion met: anxiety disorder")
            continue
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
        if stage == "completed":
            end_participation(ctx, sid, SubjectStatus.COMPLETED, today - timedelta(days=9),
                              "Completed the follow-up visit per protocol")
        elif stage == "withdrawn":
            end_participation(ctx, sid, SubjectStatus.WITHDRAWN, today - timedelta(days=5),
                              "Subject withdrew consent")
    return ids
