from datetime import date, timedelta

from crf_app.domain.roles import Role
from crf_app.domain.subjects import Enrollment
from crf_app.gui.dashboard import DashboardDialog
from crf_app.services import forms as fsvc
from crf_app.services import queries as qsvc
from crf_app.services import subjects as svc
from crf_app.services.dashboard import dashboard
from tests.conftest import fixed_clock


def test_dashboard_figures(qtbot, as_role):
    coord, mon = as_role(Role.COORDINATOR), as_role(Role.MONITOR)
    coord.clock = mon.clock = fixed_clock()
    today = date(2026, 11, 24)
    a = svc.enroll_subject(coord, Enrollment("S01-001", "S01", "ABC", 1960, "F", "NSX",
                                             today - timedelta(days=20),
                                             today - timedelta(days=20),
                                             today - timedelta(days=14)))
    svc.enroll_subject(coord, Enrollment("S01-002", "S01", "DEF", 1960, "F", "NSX",
                                         today - timedelta(days=2), today - timedelta(days=2)))
    visits = svc.subject_detail(coord, a).visits
    svc.record_visit_date(coord, visits[1].id, today - timedelta(days=14))
    fsvc.save_form(coord, visits[1].id, "vital_signs", {"SYSBP": "120"})
    qsvc.raise_query(mon, visits[1].id, "vital_signs", "SYSBP", "check")
    later = as_role(Role.MONITOR)
    later.clock = fixed_clock(2026, 12, 4)
    d = dashboard(later)
    assert d.enrolment["S01"][-1] == 2 and d.enrolment["S01"][0] == 1
    statuses = dict(d.completion)["S01-001"]
    assert statuses[d.visit_codes.index("BL")] == "done"
    assert statuses[d.visit_codes.index("D7")] == "overdue"  # window ended 2026-11-18
    assert dict(d.queries_by_age)["8–14 days"] == 1
    dlg = DashboardDialog(later, sdv={"S01": (1, 2)})
    qtbot.addWidget(dlg)
    dlg.show()
    assert dlg.grab().width() > 500
