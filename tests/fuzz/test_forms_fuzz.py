"""Hostile form entries through the service: `save_form` stores exactly what the forms engine
accepts, and nothing the engine refuses.

The domain's own properties (tests/domain/forms/test_forms_properties.py) prove the engine
sound; this one proves the service cannot be talked past it: for any entry (well-typed, almost
right, or junk of any Python type), save_form refuses exactly when validate_form refuses, a
refusal leaves the stored form untouched, and an accepted save stores precisely the engine's
canonical values, which re-validate unchanged. After every example the audit trail verifies and
replays clean against the data.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from crf_app.domain.errors import ValidationFailed
from crf_app.domain.forms import FormDef, ItemDef, validate_form
from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.integrity import verify_audit
from crf_app.services.forms import flatten, form_library, save_form, unflatten
from crf_app.storage.models import FormInstance, ItemValue
from tests.fuzz.conftest import examples

PASSWORD = "Test-pass-1234"
NASTY = st.sampled_from([
    "", " ", "  12 ", "1,5", "1.", ".5", "-0", "+3", "1e3", "0x1A", "NaN", "Infinity", "١٢",
    "𝟙𝟚", "½", "Ⅻ", "--1", "12abc", "\x00", "\t\n", "é", "\u202e12", "9" * 40, "x" * 500,
    "2026-02-30", "2026-13-01", "0000-00-00", "2026-1-1", "26-01-01", "2026/01/01", "2026",
    "2026-05", "24:00", "23:60", "7:5", "12:30:15", "2026-01-01T25:00", "Y", "N", "y", "yes",
    "Z", "|", "A|A", "X|Y|Z|X",
])
JUNK = st.one_of(st.none(), st.text(max_size=30), st.integers(), st.floats(),
                 st.booleans(), st.lists(st.text(max_size=4), max_size=3),
                 st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
                 st.decimals(allow_nan=True, allow_infinity=True), NASTY)


def plausible(item: ItemDef) -> st.SearchStrategy:
    """Values of the item's own type: mostly accepted, some just outside its rules."""
    t = item.type
    if t in ("integer", "decimal"):
        lo, hi = item.bounds[0], item.bounds[1]
        lo = (lo - 5) if lo is not None else Decimal(-1000)
        hi = (hi + 5) if hi is not None else Decimal(1000)
        places = (item.precision or 0) if t == "decimal" else 0
        return st.decimals(min_value=lo, max_value=hi, places=places).map(str)
    if t in ("date", "partial_date"):
        days = st.dates(date(1900, 1, 1), date.today() + timedelta(days=400)).map(
            date.isoformat)
        return st.one_of(days, days.map(lambda d: d[:7]), days.map(lambda d: d[:4]))
    if t == "time":
        return st.times().map(lambda v: v.strftime("%H:%M"))
    if t == "datetime":
        return st.datetimes(datetime(1990, 1, 1), datetime(2030, 1, 1)).map(
            lambda d: d.strftime("%Y-%m-%dT%H:%M"))
    if t == "text":
        return st.text(max_size=item.text_limit + 3)
    codes = [c.code for c in item.codes] or ["?"]
    if t == "multi_choice":
        return st.lists(st.sampled_from(codes), max_size=4).map("|".join)
    return st.one_of(st.sampled_from(codes), st.sampled_from(codes).map(str.lower))


def entries(form: FormDef) -> st.SearchStrategy:
    plain = {i.id: st.one_of(plausible(i), plausible(i), JUNK)
             for i in form.plan.plain_order}
    entry = st.fixed_dictionaries({}, optional=plain)
    for section, order, _ in form.plan.repeating:
        row = st.fixed_dictionaries({}, optional={i.id: st.one_of(plausible(i), JUNK)
                                                  for i in order if not i.is_computed})
        rows = st.one_of(st.lists(row, max_size=3), JUNK)
        entry = st.tuples(entry, rows).map(lambda pair, sid=section.id: {**pair[0],
                                                                          sid: pair[1]})
    extra = st.dictionaries(st.sampled_from(["NOT_AN_ITEM", "", "__class__", "0"]), JUNK,
                            max_size=1)
    return st.tuples(entry, extra).map(lambda pair: {**pair[0], **pair[1]})


@pytest.fixture(scope="module")
def site(tmp_path_factory, protocol, form_definitions):
    """One study: a subject on study (every visit scheduled) and one still in screening."""
    from crf_app.services.accounts import login
    from crf_app.services.context import open_new_database
    from crf_app.services.setup import NewUser, add_user, create_study
    from crf_app.services.subjects import enroll_subject, subject_detail
    from crf_app.storage.audit import SYSTEM

    db = open_new_database(f"sqlite:///{tmp_path_factory.mktemp('forms-fuzz') / 'f.db'}")
    study = create_study(db, protocol, form_definitions,
                         admin=NewUser("admin", "Ada Admin", Role.ADMIN, PASSWORD))
    add_user(db, SYSTEM, NewUser("inv", "Ivo Investigator", Role.INVESTIGATOR, PASSWORD))
    inv = login(study, "inv", PASSWORD)
    inv = type(inv)(study, type(inv.user)(inv.user.id, "inv", inv.user.full_name,
                                           inv.user.role, None))
    today = date.today()
    on_study = enroll_subject(inv, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                              today - timedelta(days=3),
                                              today - timedelta(days=3),
                                              today - timedelta(days=2)))
    screening = enroll_subject(inv, Enrollment("S02-002", "S02", "DEF", 1970, "M", "PBO",
                                               today - timedelta(days=1),
                                               today - timedelta(days=1)))
    pairs = []
    for sid in (on_study, screening):
        for visit in subject_detail(inv, sid).visits:
            pairs += [(visit.id, f) for f in protocol.visit(visit.code).forms]
    yield study, inv, pairs, form_library(study)
    study.close()


def stored(study, visit_id: int, form_id: str) -> tuple[str | None, dict]:
    with study.db.reading() as s:
        fi = s.execute(select(FormInstance).where(FormInstance.visit_id == visit_id,
                                                  FormInstance.form_id == form_id)
                       ).scalar_one_or_none()
        if fi is None:
            return None, {}
        return fi.status, {(v.item_id, v.row_index): v.value for v in s.execute(
            select(ItemValue).where(ItemValue.form_instance_id == fi.id)).scalars()}


@settings(max_examples=examples(70), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_save_form_stores_exactly_what_the_engine_accepts(site, data):
    study, inv, pairs, library = site
    visit_id, form_id = data.draw(st.sampled_from(pairs), label="visit, form")
    form = library.get(form_id)
    raw = data.draw(entries(form), label="entry")
    complete = data.draw(st.booleans(), label="complete")
    before = stored(study, visit_id, form_id)
    engine = validate_form(form, raw, complete=complete)
    try:
        save_form(inv, visit_id, form_id, raw, complete=complete, reason="fuzzing")
    except ValidationFailed as exc:
        assert not engine.ok, f"refused although the engine accepts it: {exc}"
        assert stored(study, visit_id, form_id) == before, "a refused save changed the form"
        event("refused")
        return
    event("saved")
    assert engine.ok, f"saved although the engine refuses: {engine.errors}"
    status, values = stored(study, visit_id, form_id)
    assert status == ("complete" if complete else "in_progress")
    assert values == flatten(form, engine.values)
    again = validate_form(form, unflatten(form, values), complete=complete)
    assert again.ok and flatten(form, again.values) == values  # a stored value re-validates
    report = verify_audit(study.db)
    assert report.ok, report.text()


def test_entries_of_every_python_type_reach_the_engine_not_a_traceback(site):
    """A few fixed hostile entries (what a GUI bug or a script could send)."""
    _study, inv, pairs, library = site
    visit_id, form_id = next((v, f) for v, f in pairs if f == "vital_signs")
    for raw in ({"SYSBP": float("nan")}, {"SYSBP": [1, 2]}, {"SYSBP": {"a": 1}},
                {"VSTIM": time(8, 0)}, {"SYSBP": Decimal("1E+2")}, {"SYSBP": True},
                {"TEMP": "36,6"}, {"SYSBP": "\x00120"}):
        try:
            save_form(inv, visit_id, form_id, raw, reason="fuzzing")
        except ValidationFailed:
            assert not validate_form(library.get(form_id), raw).ok
