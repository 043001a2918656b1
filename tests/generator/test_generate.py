"""The large-study generator: a small study over 10 sites, every stored value validated by the
forms engine, the audit chain and its replay against the data, and the bulk writer against the
services themselves (the same actions through both give the same rows and audit events)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from crf_app.domain.forms import validate_form
from crf_app.domain.roles import Role
from crf_app.domain.subjects import SubjectStatus
from crf_app.generator.study import (
    BulkWriter,
    Plan,
    Rates,
    generate_study,
    new_study,
    run_with_services,
    site_investigator,
)
from crf_app.integrity.replay import verify_everything
from crf_app.services.context import open_new_database
from crf_app.services.definitions import load_definition
from crf_app.services.forms import flatten, form_library, unflatten
from crf_app.storage.audit import verify_chain
from crf_app.storage.log_models import AdverseEvent, DosingRecord
from crf_app.storage.models import (
    AuditEvent,
    FormInstance,
    ItemValue,
    Query,
    QueryMessage,
    Site,
    Subject,
    User,
    Visit,
)
from crf_app.storage.signoff_models import Signature, Verification

pytestmark = pytest.mark.sqlite_only
TODAY = date(2026, 3, 2)


@pytest.fixture(scope="module")
def definition():
    return load_definition()


@pytest.fixture(scope="module")
def generated(tmp_path_factory, definition):
    db = open_new_database(f"sqlite:///{tmp_path_factory.mktemp('gen') / 'g.db'}")
    summary = generate_study(db, definition.protocol, definition.forms, subjects=20, sites=10,
                             seed=11, today=TODAY)
    yield summary
    db.dispose()


def test_counts_over_ten_sites(generated):
    study = generated.study
    assert [s.code for s in study.protocol.sites] == [f"S{k:02d}" for k in range(1, 11)]
    with study.db.reading() as s:
        assert s.execute(select(Site.code)).scalars().all() == [f"S{k:02d}" for k in
                                                                 range(1, 11)]
        subjects = s.execute(select(Subject)).scalars().all()
        assert len(subjects) == 20 == generated.subjects
        assert len({subj.site_id for subj in subjects}) >= 6
        # every scheduled form of every visit done is filled (a screen failure stops at the
        # eligibility form)
        for subj in subjects:
            done = [v for v in subj.visits if v.status == "done"]
            assert done and done[0].visit_code == "SCR"
            for v in done:
                saved = {f.form_id for f in v.forms}
                wanted = set(study.protocol.visit(v.visit_code).forms)
                if subj.status == SubjectStatus.SCREEN_FAILED:
                    assert saved == {"eligibility"}
                else:
                    assert saved == wanted, (subj.screening_number, v.visit_code)
                    assert {f.status for f in v.forms} == {"complete"}
            if subj.baseline_date is not None and subj.status != SubjectStatus.WITHDRAWN:
                days = {d for (d,) in s.execute(select(DosingRecord.dose_date).where(
                    DosingRecord.subject_id == subj.id))}
                span = min(28, (TODAY - subj.baseline_date).days)
                assert len(days) == span, subj.screening_number
        statuses = Counter(subj.status for subj in subjects)
        assert len(statuses) >= 3
        n_values = s.execute(select(ItemValue.id)).all()
        assert len(n_values) == generated.item_values > 3000
        assert generated.audit_events > 8000
        assert generated.rows["verification"] > 0 and generated.rows["signature"] > 0
        assert generated.rows["adverse_event"] > 0


def test_every_stored_value_passes_the_forms_engine(generated):
    study = generated.study
    lib = form_library(study)
    stored: dict[int, dict] = defaultdict(dict)
    with study.db.reading() as s:
        forms = {fi.id: fi.form_id for fi in s.execute(select(FormInstance)).scalars()}
        for fid, item, row, value in s.execute(select(
                ItemValue.form_instance_id, ItemValue.item_id, ItemValue.row_index,
                ItemValue.value)):
            stored[fid][(item, row)] = value
    assert len(forms) == generated.rows["form_instance"]
    for fid, form_id in forms.items():
        form = lib.get(form_id)
        values = stored[fid]
        result = validate_form(form, unflatten(form, values), complete=True)
        assert result.ok, (form_id, result.errors)
        assert flatten(form, result.values) == values  # stored as the engine's canonical text


def test_audit_chain_and_replay_verify(generated):
    db = generated.study.db
    with db.reading() as s:
        checked, broken = verify_chain(s)
    assert broken is None
    assert checked >= generated.audit_events
    report = verify_everything(db)
    assert report.ok, report.lines(show=20)


def test_same_seed_same_study(tmp_path, definition, generated):
    db = open_new_database(f"sqlite:///{tmp_path / 'again.db'}")
    again = generate_study(db, definition.protocol, definition.forms, subjects=20, sites=10,
                           seed=11, today=TODAY)
    assert again.rows == generated.rows and again.statuses == generated.statuses
    db.dispose()


# --- the bulk writer writes what the services write ---------------------------------------------
RATES = Rates(screen_fail=0.2, withdraw=0.25, missed_dose=0.1, wrong_dose=0.08, ae=0.8,
              second_ae=0.4, sae=0.6, outlier=0.05, manual_query=1.0, correction=0.6)


def _dump(db) -> dict[str, list]:
    """Every subject-level row (ids included) and every audit event, for comparison."""
    out: dict[str, list] = {}
    with db.reading() as s:
        for model in (Subject, Visit, FormInstance, Query, QueryMessage, DosingRecord,
                      AdverseEvent, Verification, Signature):
            table = model.__table__
            out[table.name] = [tuple(r) for r in s.execute(select(table).order_by(table.c.id))]
        t = ItemValue.__table__
        out["item_value"] = [tuple(r) for r in s.execute(
            select(t.c.form_instance_id, t.c.item_id, t.c.row_index, t.c.value)
            .order_by(t.c.form_instance_id, t.c.item_id, t.c.row_index))]
        ev = AuditEvent.__table__.c
        # the set-up (create_study, add_user) and the re-authentication of a signature log in
        # at the wall-clock time: compare their timestamps apart. The bulk writer commits a
        # subject's events with its rows once the subject is finished (so a kill leaves a
        # study that verifies), so the trail is compared subject by subject, each subject's
        # events in their order (ids and hashes differ with the interleaving)
        order = (ev.subject_id.is_(None).desc(), ev.subject_id, ev.id)
        out["audit_event"] = [tuple(r) for r in s.execute(
            select(ev.user_id, ev.username, ev.action, ev.entity, ev.entity_id, ev.field,
                   ev.old_value, ev.new_value, ev.reason, ev.subject_id).order_by(*order))]
        out["audit_times"] = [tuple(r) for r in s.execute(
            select(ev.subject_id, ev.occurred_at).where(ev.subject_id.is_not(None))
            .order_by(*order))]
    return out


def test_bulk_writer_writes_what_the_services_write(tmp_path, definition):
    bulk_db = open_new_database(f"sqlite:///{tmp_path / 'bulk.db'}")
    svc_db = open_new_database(f"sqlite:///{tmp_path / 'services.db'}")
    bulk = new_study(bulk_db, definition.protocol, definition.forms, sites=3)
    services = new_study(svc_db, definition.protocol, definition.forms, sites=3)
    plan = Plan(bulk.protocol, form_library(bulk), 6, seed=9, today=TODAY, rates=RATES)
    actions = list(plan.actions())
    kinds = Counter(a.kind for a in actions)
    # the story covers every kind of action, corrections and dosing queries included
    assert set(kinds) == {"enrol", "visit_date", "baseline", "form", "usual_day", "dose", "ae",
                          "sae_reported", "query", "answer", "close", "verify", "sign", "end",
                          "done"}, kinds
    assert any(a.kind == "form" and a.args[4] for a in actions)  # a correction with a reason
    assert any(a.kind == "close" and a.args[0][0] == "dose" for a in actions)
    assert any(a.kind == "close" and a.args[0][0] == "auto" for a in actions)
    assert {a.args[0] for a in actions if a.kind == "end"} == {SubjectStatus.COMPLETED,
                                                              SubjectStatus.WITHDRAWN}

    BulkWriter(bulk).run(iter(actions))
    run_with_services(services, actions)
    mine, theirs = _dump(bulk_db), _dump(svc_db)
    for table in theirs:
        assert len(mine[table]) == len(theirs[table]), table
        for a, b in zip(mine[table], theirs[table], strict=True):
            assert a == b, table
    with svc_db.reading() as s:
        screen_failed = s.execute(select(Subject.id).where(
            Subject.status == SubjectStatus.SCREEN_FAILED)).all()
    assert screen_failed
    for db in (bulk_db, svc_db):
        assert verify_everything(db).ok
        db.dispose()


def test_site_accounts(generated):
    with generated.study.db.reading() as s:
        users = dict(s.execute(select(User.username, User.role)).all())
    assert users[site_investigator("S10")] == Role.INVESTIGATOR
    assert {"admin", "coordinator", "investigator", "monitor", "datamanager"} <= set(users)


def test_nothing_happens_today_or_later(generated):
    with generated.study.db.reading() as s:
        last = s.execute(select(AuditEvent.occurred_at).where(
            AuditEvent.subject_id.is_not(None)).order_by(AuditEvent.occurred_at.desc())
            .limit(1)).scalar_one()
        latest_visit = max(d for (d,) in s.execute(select(Visit.actual_date)) if d)
    assert last.astimezone().date() < TODAY
    assert latest_visit < TODAY
    assert latest_visit > TODAY - timedelta(days=10)


def test_demo_command_generates_in_bulk(tmp_path, capsys):
    from crf_app.cli import main

    db = tmp_path / "large.db"
    assert main(["--database", str(db), "demo", "--subjects", "5", "--sites", "4",
                 "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "5 subjects over 4 sites" in out and "audit events" in out
    assert main(["--database", str(db), "verify-audit"]) == 0
    assert "the data matches the audit trail" in capsys.readouterr().out
    assert main(["--database", str(tmp_path / "no.db"), "demo", "--large", "--subjects",
                 "0"]) == 1
