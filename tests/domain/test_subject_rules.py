from datetime import date

import pytest

from crf_app.domain.subjects import (
    Enrollment,
    check_enrollment,
    visit_display_status,
    window_deviation,
)

TODAY = date(2026, 11, 24)


def enrollment(**kw):
    base = dict(screening_number="S01-001", site="S01", initials="ABC", birth_year=1960, sex="F",
                arm="NSX", consent_date=date(2026, 11, 1), enrolled_on=date(2026, 11, 2))
    base.update(kw)
    return Enrollment(**base)


def test_valid_enrollment_has_no_errors(protocol):
    assert check_enrollment(enrollment(), protocol, TODAY) == []


@pytest.mark.parametrize("change, field, rule", [
    (dict(screening_number="s1"), "screening_number", "format"),
    (dict(site="S99"), "site", "codelist"),
    (dict(initials="Anna"), "initials", "format"),
    (dict(birth_year=2015), "birth_year", "range"),
    (dict(sex="X"), "sex", "codelist"),
    (dict(arm="ZZZ"), "arm", "codelist"),
    (dict(consent_date=date(2026, 11, 3)), "consent_date", "consent_before_enrolment"),
    (dict(enrolled_on=date(2026, 12, 1)), "enrolled_on", "not_future"),
    (dict(baseline_date=date(2026, 12, 1)), "baseline_date", "not_future"),
    (dict(baseline_date=date(2026, 10, 1)), "baseline_date", "after_consent"),
])
def test_each_enrollment_rule(protocol, change, field, rule):
    errors = check_enrollment(enrollment(**change), protocol, TODAY)
    assert [(e.field, e.rule) for e in errors] == [(field, rule)]
    assert errors[0].message


def test_window_deviation():
    start, end = date(2026, 3, 6), date(2026, 3, 8)
    assert window_deviation(date(2026, 3, 7), start, end) == ""
    assert window_deviation(date(2026, 3, 8), start, end) == ""
    assert "2 days late" in window_deviation(date(2026, 3, 10), start, end)
    assert "1 day early" in window_deviation(date(2026, 3, 5), start, end)
    assert window_deviation(date(2026, 3, 5), None, None) == ""


def test_overdue_status():
    assert visit_display_status("planned", date(2026, 11, 20), TODAY) == "overdue"
    assert visit_display_status("planned", date(2026, 11, 24), TODAY) == "planned"
    assert visit_display_status("done", date(2026, 11, 1), TODAY) == "done"
