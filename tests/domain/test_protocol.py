from datetime import date
from pathlib import Path

import pytest
import yaml

from crf_app.domain.errors import ProtocolError
from crf_app.domain.protocol import load_protocol, study_day_date
from crf_app.domain.subjects import schedule


def test_shipped_protocol_has_the_nasemax_schedule(protocol):
    windows = {v.code: (v.day, v.first_day, v.last_day) for v in protocol.visits}
    assert windows == {"SCR": (0, -7, 0), "BL": (1, 1, 1), "D7": (7, 6, 8),
                       "D14": (14, 12, 16), "FU30": (30, 27, 33)}


def test_regimens_from_the_seed_literature(protocol):
    stroke = protocol.regimen("stroke-tbi")
    assert (stroke.dose_mg_per_instillation.min, stroke.dose_mg_per_instillation.max) == (0.1, 0.3)
    assert (stroke.instillations_per_day.min, stroke.instillations_per_day.max) == (2, 4)
    assert (stroke.course_days.min, stroke.course_days.max) == (7, 14)
    assert stroke.daily_max_mg == pytest.approx(1.2)
    cog = protocol.regimen("cognition")
    assert (cog.dose_mg_per_instillation.max, cog.instillations_per_day.max) == (0.2, 2)
    cyclic = protocol.regimen("neurodegenerative-cyclic")
    assert cyclic.cycle is not None and (cyclic.course_days.min, cyclic.course_days.max) == (10, 20)
    ais = protocol.regimen("acute-ischaemic-stroke")
    assert ais.dose_mg_per_instillation.max == 6 and ais.instillations_per_day.max == 2
    assert ais.course_days.max == 7
    assert protocol.regimen("acute-ischaemic-stroke-severe").dose_mg_per_instillation.min == 9


def test_schedule_from_baseline(protocol):
    plan = {p.code: p for p in schedule(protocol, date(2026, 3, 1))}
    assert plan["BL"].planned == date(2026, 3, 1)
    assert plan["SCR"].window_start == date(2026, 2, 21) and plan["SCR"].window_end == date(
        2026, 2, 28)
    assert (plan["D7"].window_start, plan["D7"].planned, plan["D7"].window_end) == (
        date(2026, 3, 6), date(2026, 3, 7), date(2026, 3, 8))
    assert (plan["FU30"].window_start, plan["FU30"].window_end) == (date(2026, 3, 27),
                                                                    date(2026, 4, 2))
    assert study_day_date(date(2026, 3, 1), 14) == date(2026, 3, 14)


def _write(tmp_path, mutate):
    data = yaml.safe_load(Path("forms/study.yaml").read_text(encoding="utf-8"))
    mutate(data)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("mutate, path_fragment, rule_fragment", [
    (lambda d: d["visits"][2].update(windw={"before": 1}), "visits.2.windw", "unknown key"),
    (lambda d: d["regimens"][0]["dose_mg_per_instillation"].update(min=0.5),
     "regimens.0.dose_mg_per_instillation", "must not exceed max"),
    (lambda d: d["arms"][0].update(regimen="nope"), "arms.0.regimen", "unknown regimen"),
    (lambda d: d["visits"][1]["window"].update(before=-1), "visits.1.window.before",
     "greater than or equal to 0"),
    (lambda d: d.pop("title"), "title", "Field required"),
    (lambda d: d["sites"].append(dict(d["sites"][0])), "sites.3.code", "duplicate"),
])
def test_bad_protocol_names_file_key_and_rule(tmp_path, mutate, path_fragment, rule_fragment):
    path = _write(tmp_path, mutate)
    with pytest.raises(ProtocolError) as exc:
        load_protocol(path)
    msg = str(exc.value)
    assert str(path) in msg and path_fragment in msg and rule_fragment in msg


def test_protocol_that_is_not_yaml(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("sites: [unclosed", encoding="utf-8")
    with pytest.raises(ProtocolError, match="not valid YAML"):
        load_protocol(path)
