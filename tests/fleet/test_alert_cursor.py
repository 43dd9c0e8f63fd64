"""The alert loop's telemetry cursor is a row written in the alert run's fenced transaction: a new
leader judges the windows that arrived between the old leader's last run and the takeover, a stale
leader's run moves nothing, and the first run, retention and a backlog are each handled. Two alert
engines on two connection pools of one database stand for two workers; clocks are injected; on
SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, update

from fleet import alerts as alerts_module
from fleet.alerts import AlertEngine, AlertRules, list_alerts
from fleet.errors import StaleLeaderError
from fleet.leader import LeaderElector
from fleet.storage import alert_cursor, create_engine_for_url
from fleet.storage.alerts import AlertState, newest_window_id
from fleet.storage.retention import apply_retention
from tests.fleet.test_alerts_hold import ERRORS_ONLY, T0, Clock, Fleet
from tests.support.fleet import FakeLink, another_pool

LEASE_S = 15.0
RENEW_S = 5.0
RULES = AlertRules(**ERRORS_ONLY)


@pytest.fixture
def fleet(db_url: str) -> Iterator[Fleet]:
    engine = create_engine_for_url(db_url)
    yield Fleet(engine, Clock())
    engine.dispose()


@pytest.fixture
def second_engine(fleet: Fleet) -> Iterator[Engine]:
    """Another worker's connection pool on the same database."""
    with another_pool(fleet.engine) as engine:
        yield engine


def worker(engine: Engine, fleet: Fleet) -> AlertEngine:
    """A fresh worker's alert engine: nothing in memory from any earlier run."""
    return AlertEngine(engine, FakeLink(), "fleet/alerts", RULES, clock=fleet.clock)


def elector(engine: Engine, fleet: Fleet, name: str) -> LeaderElector:
    return LeaderElector(engine, lease_s=LEASE_S, renew_s=RENEW_S, holder=name, clock=fleet.clock)


def cursor(fleet: Fleet) -> int | None:
    with fleet.engine.begin() as conn:
        stored = alert_cursor.load(conn)
    return None if stored is None else stored.window_id


def newest(fleet: Fleet) -> int:
    with fleet.engine.begin() as conn:
        return newest_window_id(conn)


def opened_at(opened: list[object]) -> list[tuple[str, object]]:
    return [(a.rule, a.opened_at) for a in opened]  # type: ignore[attr-defined]


def test_a_window_between_two_leaders_is_judged_by_the_new_one(fleet: Fleet, second_engine: Engine) -> None:
    a_lease, b_lease = elector(fleet.engine, fleet, "a"), elector(second_engine, fleet, "b")
    assert a_lease.campaign()
    fleet.status("cam-1")
    assert worker(fleet.engine, fleet).evaluate(a_lease.fence()) == ([], [])
    # a's last run is over; a bad window, then a good one, arrive; a dies before its next run.
    fleet.clock.at(10)
    fleet.window("cam-1", 12)
    fleet.clock.at(20)
    fleet.window("cam-1", 0)
    # b takes over once a's lease ran out: a fresh process that never saw a window.
    fleet.clock.at(LEASE_S + 1)
    assert b_lease.campaign()
    opened, resolved = worker(second_engine, fleet).evaluate(b_lease.fence())
    # Starting at the newest window (the good one) b would have judged nothing; it went on from a's
    # cursor and judged the bad window at the time it arrived.
    assert opened_at(opened) == [("error_rate", T0 + timedelta(seconds=10))]
    assert [x.resolved_at for x in resolved] == [T0 + timedelta(seconds=20)]
    assert cursor(fleet) == newest(fleet)


def test_a_stale_leaders_run_does_not_move_the_cursor(fleet: Fleet, second_engine: Engine) -> None:
    a_lease, b_lease = elector(fleet.engine, fleet, "a"), elector(second_engine, fleet, "b")
    a_lease.campaign()
    token = a_lease.fence()
    a = worker(fleet.engine, fleet)
    fleet.status("cam-1")
    fleet.window("cam-1", 0)
    a.evaluate(token)
    before = cursor(fleet)
    assert before == newest(fleet)
    fleet.clock.at(LEASE_S + 1)
    b_lease.campaign()
    fleet.window("cam-1", 12)
    # a, paused past its lease, resumes its run with the token it held: refused, nothing moved.
    with pytest.raises(StaleLeaderError):
        a.evaluate(token)
    assert cursor(fleet) == before
    assert list_alerts(fleet.engine, AlertState.ALL) == []
    # So the window a read is still b's to judge.
    opened, _ = worker(second_engine, fleet).evaluate(b_lease.fence())
    assert opened_at(opened) == [("error_rate", fleet.clock.now)]
    assert cursor(fleet) == newest(fleet)


def test_the_first_run_ever_judges_each_devices_newest_window_only(fleet: Fleet) -> None:
    fleet.status("cam-1")
    fleet.window("cam-1", 12)  # history from before the alert loop: not judged
    fleet.clock.at(10)
    fleet.window("cam-1", 0)
    assert cursor(fleet) is None
    assert worker(fleet.engine, fleet).evaluate() == ([], [])
    assert cursor(fleet) == newest(fleet)
    # From there on every window counts, whichever worker runs next.
    fleet.clock.at(20)
    fleet.window("cam-1", 12)
    opened, _ = worker(fleet.engine, fleet).evaluate()
    assert opened_at(opened) == [("error_rate", fleet.clock.now)]


def test_windows_after_a_cursor_that_retention_deleted_are_judged(fleet: Fleet) -> None:
    fleet.status("cam-1")
    fleet.window("cam-1", 0)
    worker(fleet.engine, fleet).evaluate()
    judged = cursor(fleet)
    # Two days on: retention folds every window into hourly rows, the cursor's own window too
    # (on SQLite the ids then start again: the table's end was deleted).
    fleet.clock.at(2 * 86400)
    assert apply_retention(fleet.engine, fleet.clock(), 1, 30).windows_rolled_up == 1
    assert newest(fleet) == 0
    fleet.window("cam-1", 12)
    fleet.clock.at(2 * 86400 + 10)
    fleet.window("cam-1", 0)
    fleet.clock.at(2 * 86400 + 20)
    fleet.window("cam-1", 12)
    if fleet.engine.dialect.name == "sqlite":
        assert (judged, newest(fleet)) == (1, 3)  # ids 1 to 3 again: id 1 is now a window not judged
    opened, _ = worker(fleet.engine, fleet).evaluate()
    # Known by its receive time: every window received after the cursor's is judged, none twice.
    assert sorted(a.opened_at for a in opened) == [
        T0 + timedelta(seconds=s) for s in (2 * 86400, 2 * 86400 + 20)
    ]
    assert cursor(fleet) == newest(fleet)


def test_a_cursor_beyond_every_window_goes_on_after_its_receive_time(fleet: Fleet) -> None:
    """A restored telemetry table: its ids are all below the stored cursor."""
    fleet.status("cam-1")
    fleet.window("cam-1", 12)  # judged before the table was restored
    fleet.clock.at(10)
    fleet.window("cam-1", 0)
    worker(fleet.engine, fleet).evaluate()
    with fleet.engine.begin() as conn:
        conn.execute(update(alert_cursor.alert_cursor).values(window_id=10**9))
    fleet.clock.at(20)
    fleet.window("cam-1", 12)
    opened, _ = worker(fleet.engine, fleet).evaluate()
    assert opened_at(opened) == [("error_rate", fleet.clock.now)]
    assert cursor(fleet) == newest(fleet)


def test_a_backlog_is_judged_over_bounded_runs_none_skipped(
    fleet: Fleet, second_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alerts_module, "WINDOW_PAGE", 2)
    monkeypatch.setattr(alerts_module, "MAX_WINDOWS_PER_RUN", 4)
    fleet.status("cam-1")
    worker(fleet.engine, fleet).evaluate()
    start = cursor(fleet)
    assert start is not None
    # A long outage: ten windows wait, bad at 2, 5 and 8 (each followed by a good one).
    for i in range(10):
        fleet.clock.at(i * 10)
        fleet.window("cam-1", 12 if i in (2, 5, 8) else 0)
    fleet.clock.at(200)
    runs = []
    for run in range(3):  # at most four windows a run, and each run a different worker's
        opened, _ = worker(second_engine if run % 2 else fleet.engine, fleet).evaluate()
        runs.append(([a.opened_at for a in opened], cursor(fleet)))
    assert runs == [
        ([T0 + timedelta(seconds=20)], start + 4),
        ([T0 + timedelta(seconds=50)], start + 8),
        ([T0 + timedelta(seconds=80)], start + 10),
    ]
