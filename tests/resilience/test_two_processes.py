"""Two app processes on one database file: no lost update; a busy database is waited for,
then reported plainly."""

from __future__ import annotations

import re
import sqlite3
import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from crf_app.domain.errors import DatabaseRefused, StorageFailed
from crf_app.domain.roles import Role
from crf_app.services import forms as fsvc
from crf_app.storage import engine as engine_module
from crf_app.storage.audit import verify_chain
from crf_app.storage.models import AuditEvent
from tests.conftest import PASSWORD
from tests.resilience.child import FORM, vitals
from tests.resilience.conftest import enroll_with_visits, wait_for_line

STALE = re.compile(r"changed by (\w+) at \d{4}-\d\d-\d\d \d\d:\d\d .*— reload")


class Contenders:
    """Two app processes (coord and inv) working on the same form of the same database."""

    def __init__(self, workers, folder, db_url, visit, numbers: dict[str, list[int]],
                 together: bool):
        self.workers, self.folder, self.together = workers, folder, together
        self.users = list(numbers)
        self.logs = {u: folder / f"{u}.log" for u in self.users}
        self.pids = {u: workers.start("contend", self.logs[u], url=db_url, user=u,
                                      password=PASSWORD, visit=visit, numbers=numbers[u],
                                      go=str(folder / ("go" if together else f"go-{u}")))
                     for u in self.users}

    def _line(self, user: str, prefixes: tuple[str, ...], r: int) -> str:
        wanted = tuple(f"{p} {r} " for p in prefixes)
        lines = wait_for_line(self.logs[user], wanted)
        return next(line for line in lines if line.startswith(wanted))

    def round(self, r: int) -> dict[str, str]:
        """Both have opened the form; release them (together, or in order); their results."""
        for user in self.users:
            self._line(user, ("OPENED",), r)
        results = {}
        if self.together:
            (self.folder / f"go-{r}").touch()
        for user in self.users:
            if not self.together:
                (self.folder / f"go-{user}-{r}").touch()
            results[user] = self._line(user, ("SAVED", "STALE"), r)
        return results

    def finish(self) -> None:
        for pid in self.pids.values():
            assert self.workers.wait(pid) == "exit 0"


def _item_events(study, visit_label: str) -> list[str | None]:
    with study.db.reading() as s:
        return list(s.execute(select(AuditEvent.new_value).where(
            AuditEvent.entity_id == f"{visit_label}/VSTIM").order_by(AuditEvent.id)).scalars())


def test_second_process_saving_a_stale_copy_is_refused(study, coordinator, workers, tmp_path,
                                                       db_url):
    visit = enroll_with_visits(coordinator, "S01-001")[0]
    fsvc.save_form(coordinator, visit, FORM, vitals(1), expected_version=0)
    both = Contenders(workers, tmp_path, db_url, visit, {"coord": [2], "inv": [3]},
                      together=False)
    result = both.round(0)
    both.finish()
    first, second = result["coord"], result["inv"]
    assert first.startswith("SAVED")
    assert second.startswith("STALE")
    assert STALE.search(second) and "changed by coord at" in second
    assert "your entries were not saved" in second
    snap = fsvc.open_form(coordinator, visit, FORM)
    assert snap.raw["VSTIM"] == vitals(2)["VSTIM"] and snap.updated_by == "coord"
    assert _item_events(study, f"S01-001/SCR/{FORM}") == [vitals(1)["VSTIM"],
                                                          vitals(2)["VSTIM"]]


def test_simultaneous_saves_one_wins_the_other_is_refused(study, coordinator, workers,
                                                          tmp_path, db_url):
    """Both processes open the same version and save at the same moment, round after round:
    exactly one save lands; the other is refused naming the winner; nothing is overwritten."""
    visit = enroll_with_visits(coordinator, "S01-001")[0]
    rounds = 12
    numbers = {"coord": [100 + 2 * r for r in range(rounds)],
               "inv": [101 + 2 * r for r in range(rounds)]}
    both = Contenders(workers, tmp_path, db_url, visit, numbers, together=True)
    expected_events, wins = [], {"coord": 0, "inv": 0}
    for r in range(rounds):
        outcome = both.round(r)
        saved = [u for u, line in outcome.items() if line.startswith("SAVED")]
        stale = [u for u, line in outcome.items() if line.startswith("STALE")]
        assert len(saved) == 1 and len(stale) == 1, outcome
        winner = saved[0]
        wins[winner] += 1
        assert f"changed by {winner} at" in outcome[stale[0]]
        snap = fsvc.open_form(coordinator, visit, FORM)
        assert snap.raw["VSTIM"] == vitals(numbers[winner][r])["VSTIM"]
        assert snap.updated_by == winner
        expected_events.append(vitals(numbers[winner][r])["VSTIM"])
        assert _item_events(study, f"S01-001/SCR/{FORM}") == expected_events
    both.finish()
    print(f"\nsimultaneous saves won: {wins}")
    with study.db.reading() as s:
        assert verify_chain(s)[1] is None


# --- a busy database ----------------------------------------------------------------------------
@pytest.fixture
def short_busy_timeout(study, monkeypatch):
    """The study's connections wait 0.4 s for a lock instead of 10 s."""
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_MS", 400)
    study.db.engine.dispose()  # new connections pick up the shorter timeout
    return 0.4


def _hold_write_lock(path):
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")  # another program's write transaction
    return con


def test_lock_held_briefly_is_waited_for(study, coordinator, monkeypatch):
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_MS", 5000)  # ample, even on a busy CPU
    study.db.engine.dispose()
    visit = enroll_with_visits(coordinator, "S01-001")[0]
    holder = _hold_write_lock(study.db.path)
    releaser = threading.Timer(0.15, holder.rollback)
    releaser.start()
    started = time.perf_counter()
    try:
        fsvc.save_form(coordinator, visit, FORM, vitals(1), expected_version=0)
    finally:
        releaser.join()
        holder.close()
    assert time.perf_counter() - started >= 0.1  # it waited, then saved
    assert fsvc.open_form(coordinator, visit, FORM).raw["VSTIM"] == vitals(1)["VSTIM"]


def test_lock_held_too_long_is_reported_plainly_and_nothing_saved(study, coordinator,
                                                                   short_busy_timeout):
    visit = enroll_with_visits(coordinator, "S01-001")[0]
    fsvc.save_form(coordinator, visit, FORM, vitals(1), expected_version=0)
    version = fsvc.open_form(coordinator, visit, FORM).row_version
    holder = _hold_write_lock(study.db.path)
    started = time.perf_counter()
    try:
        with pytest.raises(StorageFailed) as caught:
            fsvc.save_form(coordinator, visit, FORM, vitals(2), reason="typo",
                           expected_version=version)
    finally:
        holder.rollback()
        holder.close()
    waited = time.perf_counter() - started
    assert short_busy_timeout * 0.9 <= waited < short_busy_timeout + 5
    exc = caught.value
    assert isinstance(exc, DatabaseRefused) and exc.cause == StorageFailed.BUSY
    message = str(exc)
    assert message.startswith("The database is busy")
    assert "0.4 seconds" in message and "nothing was saved" in message
    assert "what you typed is kept" in message
    assert "OperationalError" not in message and "sqlite" not in message.lower()
    assert isinstance(exc.__cause__, OperationalError)  # kept for the log, not shown
    snap = fsvc.open_form(coordinator, visit, FORM)
    assert snap.raw["VSTIM"] == vitals(1)["VSTIM"] and snap.row_version == version
    # the lock gone, the same save goes through
    fsvc.save_form(coordinator, visit, FORM, vitals(2), reason="typo", expected_version=version)
    assert fsvc.open_form(coordinator, visit, FORM).raw["VSTIM"] == vitals(2)["VSTIM"]


def test_busy_database_while_logging_in_is_plain_too(study, as_role, short_busy_timeout):
    holder = _hold_write_lock(study.db.path)
    try:
        with pytest.raises(StorageFailed, match=r"^The database is busy"):
            as_role(Role.INVESTIGATOR)
    finally:
        holder.rollback()
        holder.close()


def test_opening_and_reading_do_not_wait_for_another_writer(study, db_url, short_busy_timeout,
                                                            capsys):
    """Another process is in the middle of a long write: this one still opens the database
    (checking its schema takes no write lock) and reads it; only writes wait for the lock."""
    from crf_app.cli import main

    holder = _hold_write_lock(study.db.path)
    try:
        code = main(["--database", db_url, "users", "list"])
    finally:
        holder.rollback()
        holder.close()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "coord" in out and "inv" in out
