"""The central server's job: site laptops' ODM files merged into the study database (SQLite
or PostgreSQL), and the merged data going back to a laptop unchanged."""

from __future__ import annotations

from datetime import date

from crf_app.domain.roles import Role
from crf_app.integrity import verify_audit
from crf_app.services.demo import populate
from crf_app.services.odm_export import export_odm
from crf_app.services.odm_import import import_odm
from tests.interchange.odm_helpers import dump, make_laptop


def test_a_laptops_files_merge_into_the_study_and_come_back_unchanged(
        study, as_role, tmp_path, protocol, form_definitions):
    laptop = make_laptop(tmp_path / "laptop.db", protocol, form_definitions)
    try:
        populate(laptop.inv, 4, date.today())
        export_odm(laptop.dm, tmp_path / "laptop.xml")
        central = as_role(Role.DATA_MANAGER)
        report = import_odm(central, tmp_path / "laptop.xml")
        assert report.subjects_added == 4 and not report.conflicts
        assert report.values_added > 50 and report.events_recorded > 50
        assert verify_audit(study.db).ok
        again = import_odm(central, tmp_path / "laptop.xml")  # the same file twice: no change
        assert again.already_imported or (again.subjects_added, again.values_added) == (0, 0)
        # the central database's export, merged back into the laptop, changes nothing there
        before = dump(laptop.path)
        export_odm(central, tmp_path / "central.xml")
        back = import_odm(laptop.dm, tmp_path / "central.xml")
        assert back.conflicts == [] and back.subjects_added == 0
        assert back.values_changed == 0 and back.log_rows_added == 0
        assert dump(laptop.path) == before
        assert verify_audit(laptop.study.db).ok
    finally:
        laptop.study.close()
