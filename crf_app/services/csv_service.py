"""The CSV export: reading the study as plain data, subject batch by subject batch, for the
writer (crf_app.exports.csv_export); audited."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crf_app.domain.roles import Action
from crf_app.exports.csv_export import CsvForm, CsvPlan, CsvSubject, CsvSummary, write_csv
from crf_app.services.context import UserContext
from crf_app.services.forms import form_library
from crf_app.storage.models import FormInstance, ItemValue, Site, Subject, Visit


def prepare_csv(ctx: UserContext, *, batch: int = 200) -> CsvPlan:
    """Check the user may export; plan reading every subject the user may see, in batches."""
    ctx.require(Action.EXPORT, ctx.user.site_code)
    study = ctx.study
    with study.db.reading() as s:
        count = s.execute(select(func.count()).select_from(
            _subject_ids(ctx).subquery())).scalar_one()
    return CsvPlan(study.oid, study.protocol, form_library(study), count,
                   _stream(ctx, batch))


def _subject_ids(ctx: UserContext):
    q = select(Subject.id).join(Site, Subject.site_id == Site.id).where(
        Subject.study_id == ctx.study.study_id)
    if ctx.user.site_code:
        q = q.where(Site.code == ctx.user.site_code)
    return q.order_by(Subject.screening_number)


def _stream(ctx: UserContext, batch: int) -> Iterator[CsvSubject]:
    with ctx.study.db.reading() as s:
        ids = list(s.execute(_subject_ids(ctx)).scalars())
        for start in range(0, len(ids), batch):
            yield from _batch(s, ids[start:start + batch])
            s.expunge_all()


def _batch(s: Session, ids: list[int]) -> list[CsvSubject]:
    order = {sid: i for i, sid in enumerate(ids)}
    values: dict[int, dict[tuple[str, int], str]] = defaultdict(dict)
    for fi_id, item, row, value in s.execute(
            select(ItemValue.form_instance_id, ItemValue.item_id, ItemValue.row_index,
                   ItemValue.value).join(FormInstance).join(Visit)
            .where(Visit.subject_id.in_(ids))):
        values[fi_id][(item, row)] = value
    forms: dict[int, list[CsvForm]] = defaultdict(list)
    for fi, visit in s.execute(select(FormInstance, Visit).join(Visit)
                               .where(Visit.subject_id.in_(ids))
                               .order_by(Visit.sequence, FormInstance.form_id)):
        forms[visit.subject_id].append(CsvForm(fi.form_id, fi.form_version, fi.status,
                                               visit.visit_code, visit.actual_date,
                                               values.get(fi.id, {})))
    out = []
    for subj, site in sorted(s.execute(select(Subject, Site.code).join(
            Site, Subject.site_id == Site.id).where(Subject.id.in_(ids))).all(),
            key=lambda r: order[r[0].id]):
        out.append(CsvSubject(subj.screening_number, site, subj.arm, subj.sex, subj.birth_year,
                              subj.consent_date, subj.enrolled_on, subj.baseline_date,
                              subj.status, forms.get(subj.id, [])))
    return out


def record_csv_export(ctx: UserContext, folder: str, subjects: int) -> None:
    """Audit a finished CSV export (who exported how many subjects, where)."""
    from crf_app.storage.audit import AuditWriter

    with ctx.study.db.transaction() as s:
        AuditWriter(s, ctx.user.actor, now=ctx.now()).record(
            "export", "csv", folder[-80:], new=f"{subjects} subjects",
            reason="CSV export with the data dictionary")


def export_csv(ctx: UserContext, folder: Path, *,
               progress: Callable[[int, int], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> CsvSummary:
    """The study's data as CSV files (and the data dictionary) in `folder`; audited."""
    plan = prepare_csv(ctx)
    try:
        summary = write_csv(Path(folder), plan, progress=progress, cancelled=cancelled)
    finally:
        plan.close()
    record_csv_export(ctx, str(Path(folder).resolve()), summary.subjects)
    return summary
