"""The ODM merge goes through the same door as a save: locks refuse it (the whole file, the
lock named), a site-bound importer merges only their site, and what it changes voids exactly
the signatures covering it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from crf_app.integrity import verify_audit
from crf_app.services.forms import open_form
from crf_app.services.odm_export import export_odm
from crf_app.services.odm_import import ImportRefused, import_odm
from crf_app.services.signoff import lock, sign, signature_manifest, unlock
from tests.interchange.odm_helpers import PASSWORD, dump, set_values, subject_id
from tests.interchange.odm_helpers import visit_id as _visit_id


@pytest.fixture
def pair(laptop_a, laptops, tmp_path):
    """Laptop A with data; laptop B has merged A's first file; A then corrected S03-003's
    screening pulse and exported again (x2.xml)."""
    export_odm(laptop_a.dm, tmp_path / "x1.xml")
    b = laptops("b")
    import_odm(b.dm, tmp_path / "x1.xml")
    set_values(laptop_a.inv, "S03-003", "SCR", "vital_signs", "re-measured on A", PULSE="95")
    export_odm(laptop_a.dm, tmp_path / "x2.xml")
    return laptop_a, b


@pytest.mark.parametrize("scope", ["form", "subject", "site"])
def test_a_file_changing_locked_data_is_refused_whole_naming_the_lock(pair, tmp_path, scope):
    _a, b = pair
    sid = subject_id(b.dm, "S03-003")
    visit = _visit_id(b.dm, "S03-003", "SCR")
    from sqlalchemy import select

    from crf_app.storage.models import FormInstance, Site

    with b.study.db.reading() as s:
        target = {"subject": sid,
                  "form": s.execute(select(FormInstance.id).where(
                      FormInstance.visit_id == visit,
                      FormInstance.form_id == "vital_signs")).scalar_one(),
                  "site": s.execute(select(Site.id).where(Site.code == "S03")).scalar_one()
                  }[scope]
    lock_id = lock(b.dm, scope, target, "database lock for the interim analysis")
    before = dump(b.path)
    with pytest.raises(ImportRefused) as refused:
        import_odm(b.dm, tmp_path / "x2.xml")
    assert any(f"lock #{lock_id} by dm: database lock" in p for p in refused.value.problems)
    assert dump(b.path) == before  # nothing imported
    unlock(b.dm, lock_id, "analysis done")
    import_odm(b.dm, tmp_path / "x2.xml")
    assert open_form(b.dm, visit, "vital_signs").raw["PULSE"] == "95"
    assert verify_audit(b.study.db).ok


def test_a_site_bound_data_manager_cannot_merge_another_sites_subjects(pair, tmp_path):
    _a, b = pair
    s01_dm = replace(b.dm, user=replace(b.dm.user, site_code="S01"))
    before = dump(b.path)
    with pytest.raises(ImportRefused) as refused:
        import_odm(s01_dm, tmp_path / "x2.xml")
    assert any("S03-003" in p and "works at site S01" in p for p in refused.value.problems)
    assert dump(b.path) == before


def test_a_merged_change_voids_the_form_signature_it_touches_and_no_other(pair, tmp_path):
    _a, b = pair
    sid = subject_id(b.inv, "S03-003")
    visit = _visit_id(b.inv, "S03-003", "SCR")
    set_values(b.inv, "S03-003", "SCR", "mrs", "completed on B", MRS="2")
    for form in ("vital_signs", "mrs"):
        sign(b.inv, sid, scope="form", password=PASSWORD, meaning="Reviewed and approved",
             visit_id=visit, form_id=form)
    report = import_odm(b.dm, tmp_path / "x2.xml")
    assert report.signatures_invalidated == 1
    states = {r.form_id: r.state for r in signature_manifest(b.dm, sid)}
    assert states == {"vital_signs": "invalidated", "mrs": "valid"}
    assert verify_audit(b.study.db).ok


@pytest.mark.parametrize("first", ["here", "there"])
def test_a_value_changed_on_both_sides_is_a_conflict_whichever_changed_last(
        laptop_a, laptops, tmp_path, first):
    from crf_app.services.odm_import import list_conflicts

    a = laptop_a
    export_odm(a.dm, tmp_path / "x1.xml")
    b = laptops("b")
    import_odm(b.dm, tmp_path / "x1.xml")
    edits = [(b, "99", "re-measured on B"), (a, "95", "re-measured on A")]
    for lap, pulse, why in edits if first == "here" else reversed(edits):
        set_values(lap.inv, "S03-003", "SCR", "vital_signs", why, PULSE=pulse)
    export_odm(a.dm, tmp_path / "x2.xml")
    report = import_odm(b.dm, tmp_path / "x2.xml")
    assert len(report.conflicts) == 1
    [c] = list_conflicts(b.dm)
    assert (c.field, c.local_value, c.incoming_value) == ("PULSE", "99", "95")
    assert open_form(b.dm, _visit_id(b.dm, "S03-003", "SCR"), "vital_signs").raw["PULSE"] == "99"
