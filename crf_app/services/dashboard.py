"""Figures for the study dashboard (monitors and data managers)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import select

from crf_app.domain.roles import Action
from crf_app.domain.subjects import SubjectStatus, visit_display_status
from crf_app.services.context import UserContext
from crf_app.storage.models import Query, Site, Subject, Visit

AGE_BUCKETS = [("0–7 days", 0, 7), ("8–14 days", 8, 14), ("15–30 days", 15, 30),
               ("> 30 days", 31, 10**6)]


@dataclass(frozen=True)
class Dashboard:
    weeks: list[date]  # Monday of each week, oldest first
    enrolment: dict[str, list[int]]  # site -> cumulative subjects enrolled by each week
    visit_codes: list[str]
    completion: list[tuple[str, list[str]]]  # (subject, status per visit)
    queries_by_age: list[tuple[str, int]]
    sdv_by_site: dict[str, tuple[int, int]]  # site -> (verified, complete)


def dashboard(ctx: UserContext, *, sdv: dict[str, tuple[int, int]] | None = None) -> Dashboard:
    """The study's figures; a site-bound user's cover only their site."""
    ctx.require(Action.VIEW)
    today = ctx.today()
    codes = [v.code for v in ctx.study.protocol.visits]
    seen = (select(Subject.id).join(Site, Subject.site_id == Site.id)
            .where(Subject.study_id == ctx.study.study_id,
                   *([Site.code == ctx.user.site_code] if ctx.user.site_code else [])))
    with ctx.study.db.reading() as s:
        subjects = s.execute(select(Subject.id, Subject.screening_number, Site.code,
                                    Subject.enrolled_on, Subject.status)
                             .join(Site).where(Subject.id.in_(seen))
                             .order_by(Subject.screening_number)).all()
        visits = s.execute(select(Visit.subject_id, Visit.visit_code, Visit.status,
                                  Visit.window_end).where(Visit.subject_id.in_(seen))).all()
        opened = s.execute(select(Query.opened_at).where(
            Query.state != "closed", Query.subject_id.in_(seen))).scalars()
        now = ctx.now()
        ages = [(now - t).days for t in opened]
    first = min((r[3] for r in subjects), default=today)
    start = first - timedelta(days=first.weekday())
    weeks = []
    w = start
    while w <= today:
        weeks.append(w)
        w += timedelta(days=7)
    enrolment: dict[str, list[int]] = {}
    for site in sorted({r[2] for r in subjects}):
        dates = sorted(r[3] for r in subjects if r[2] == site)
        enrolment[site] = [sum(1 for d in dates if d < wk + timedelta(days=7)) for wk in weeks]
    by_subject: dict[int, dict[str, str]] = defaultdict(dict)
    active = {r[0]: r[4] in SubjectStatus.ACTIVE for r in subjects}
    for sid, code, status, window_end in visits:
        shown = visit_display_status(status, window_end, today)
        if not active.get(sid, False) and shown != "done":
            shown = "missed" if shown == "overdue" else ""  # will not take place
        elif shown == "planned" and window_end is not None and window_end >= today:
            shown = "due" if (window_end - today).days <= 7 else "planned"
        by_subject[sid][code] = shown
    completion = [(r[1], [by_subject[r[0]].get(c, "") for c in codes]) for r in subjects]
    counts = Counter()
    for age in ages:
        for label, lo, hi in AGE_BUCKETS:
            if lo <= age <= hi:
                counts[label] += 1
    return Dashboard(weeks, enrolment, codes, completion,
                     [(label, counts[label]) for label, _lo, _hi in AGE_BUCKETS], sdv or {})
