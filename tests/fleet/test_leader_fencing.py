"""Several workers, one truth: a leader that lost its lease writes nothing (fencing token), an
operator's pause on another worker is never undone by the leader's tick, and a new leader continues
the alert hold times the previous one started. Two controllers or alert engines on two engines of
one database stand for two workers; clocks are injected; on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from fleet.alerts import AlertEngine, AlertRules, RuleHold, list_alerts
from fleet.errors import ConflictError, StaleLeaderError
from fleet.leader import LeaderElector
from fleet.rollout_spec import Gates, RolloutState, RolloutView
from fleet.rollouts import controller as controller_module
from fleet.rollouts.controller import RolloutController
from fleet.storage import create_engine_for_url
from fleet.storage.alerts import AlertState
from fleet.storage.leases import get_lease
from fleet.storage.retention import apply_retention
from tests.fleet.test_alerts_hold import ERRORS_ONLY
from tests.fleet.test_alerts_hold import Clock as AlertClock
from tests.fleet.test_alerts_hold import Fleet as AlertFleet
from tests.fleet.test_rollouts import TOPICS, Recorder, World, healthy_wave, start
from tests.fleet.test_rollouts import world as world  # noqa: PLC0414 - the fixture, reused
from tests.support.fleet import FakeLink, another_pool

LEASE_S = 15.0
RENEW_S = 5.0
GATES = Gates(soak_s=600, install_timeout_s=1800)


def elector(engine: Engine, world: World, name: str) -> LeaderElector:
    return LeaderElector(engine, lease_s=LEASE_S, renew_s=RENEW_S, holder=name, clock=world.clock)


@pytest.fixture
def second_engine(world: World) -> Iterator[Engine]:
    """Another worker's connection pool on the same database."""
    with another_pool(world.engine) as engine:
        yield engine


def test_a_leader_that_lost_its_lease_writes_nothing(world: World, second_engine: Engine) -> None:
    rollout_id = start(world, GATES)
    a = elector(world.engine, world, "worker-a")
    assert a.campaign()
    token = a.fence()
    assert token is not None and token.term == 1
    healthy_wave(world, rollout_id)  # wave 1 is ready to be promoted
    before = world.controller.get(rollout_id)
    # a stalls (GC, SIGSTOP) past its lease; b takes over in term 2...
    b = elector(second_engine, world, "worker-b")
    world.clock.advance(LEASE_S + 1)
    assert b.campaign()
    # ...then a resumes and runs the tick it had decided on, with the token it held.
    world.link.devices()
    world.controller.tick(token)
    after = world.controller.get(rollout_id)
    assert (after.wave, after.state, after.reason, after.updated_at) == (
        before.wave,
        before.state,
        before.reason,
        before.updated_at,
    )
    assert world.link.devices() == []  # nothing assigned, nobody told
    with pytest.raises(StaleLeaderError, match="held by worker-b in term 2"):
        apply_retention(world.engine, world.clock(), 1, 30, fence=token)
    # The new leader's tick, under its own token, promotes.
    b_token = b.fence()
    assert b_token is not None and b_token.term == 2
    RolloutController(second_engine, Recorder(), TOPICS, world.clock).tick(b_token)
    assert world.controller.get(rollout_id).wave == 1
    with world.engine.begin() as conn:
        lease = get_lease(conn, "maintenance")
    assert lease is not None and (lease.holder, lease.term) == ("worker-b", 2)


def test_the_same_holder_retaking_the_lease_invalidates_its_old_token(world: World) -> None:
    """The token is the term, not the holder: a worker that lost the lease and took it back must
    not finish a round of work it started under the earlier term."""
    rollout_id = start(world, GATES)
    a = elector(world.engine, world, "worker-a")
    b = elector(world.engine, world, "worker-b")
    a.campaign()
    old = a.fence()
    world.clock.advance(LEASE_S + 1)
    b.campaign()  # term 2
    world.clock.advance(LEASE_S + 1)
    assert a.campaign()  # term 3, a again
    healthy_wave(world, rollout_id)
    assert old is not None
    world.controller.tick(old)
    assert world.controller.get(rollout_id).wave == 0
    world.controller.tick(a.fence())
    assert world.controller.get(rollout_id).wave == 1


class Stall:
    """Holds the leader's tick after it read (and locked) the rollout, until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read = threading.Event()
        self.go = threading.Event()
        real = controller_module.settle

        def settle(*args: Any, **kwargs: Any) -> Any:
            self.read.set()
            assert self.go.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(controller_module, "settle", settle)


def race(
    world: World, stall: Stall, action: Callable[[], RolloutView], fence_holder: LeaderElector
) -> Future[RolloutView]:
    """The leader's tick reads the rollout; the operator's action arrives at another worker in
    that moment; returns the action's outcome once the tick went on."""
    with ThreadPoolExecutor(2) as pool:
        tick = pool.submit(world.controller.tick, fence_holder.fence())
        assert stall.read.wait(30)
        acted = pool.submit(action)
        # The action must wait for the tick's verdict: it cannot finish while the tick holds the row.
        with pytest.raises(TimeoutError):
            acted.result(0.5)
        stall.go.set()
        tick.result(30)
        acted.exception(30)
    return acted


def test_a_takeover_waits_for_the_fenced_write_in_flight(
    world: World, second_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence holds the lease row until the leader's transaction ends: a follower whose clock
    says the lease expired cannot take it in the middle of the leader's write, only after it."""
    rollout_id = start(world, GATES)
    leader = elector(world.engine, world, "worker-a")
    leader.campaign()
    token = leader.fence()
    healthy_wave(world, rollout_id)
    stall = Stall(monkeypatch)
    follower = elector(second_engine, world, "worker-b")
    with ThreadPoolExecutor(2) as pool:
        tick = pool.submit(world.controller.tick, token)
        assert stall.read.wait(30)
        world.clock.advance(LEASE_S + 1)  # the leader stalls past its lease in mid-write
        takeover = pool.submit(follower.campaign)
        with pytest.raises(TimeoutError):
            takeover.result(0.5)
        stall.go.set()
        tick.result(30)
        assert takeover.result(30)
    assert world.controller.get(rollout_id).wave == 1  # the write that began under term 1 landed
    assert follower.fence() is not None and follower.fence().term == 2  # type: ignore[union-attr]
    world.controller.tick(token)  # and nothing more is written under term 1
    with pytest.raises(StaleLeaderError):
        apply_retention(world.engine, world.clock(), 1, 30, fence=token)


def test_a_pause_on_a_follower_during_the_leaders_tick_is_not_undone(
    world: World, second_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout_id = start(world, GATES)
    leader = elector(world.engine, world, "worker-a")
    leader.campaign()
    healthy_wave(world, rollout_id)
    follower = RolloutController(second_engine, Recorder(), TOPICS, world.clock)
    paused = race(world, Stall(monkeypatch), lambda: follower.pause(rollout_id, "hold on"), leader)
    # Applied after the tick's promotion, exactly once: what the operator was told is what is stored.
    final = world.controller.get(rollout_id)
    assert final.state == RolloutState.PAUSED and final.reason == "hold on"
    assert paused.result().wave == final.wave == 1
    assert paused.result().devices_assigned == final.devices_assigned == 2
    healthy_wave(world, rollout_id)
    world.controller.tick(leader.fence())
    assert world.controller.get(rollout_id).wave == 1  # paused: the leader does not promote
    with pytest.raises(ConflictError):
        follower.pause(rollout_id)


def test_an_abort_racing_a_rollback_verdict_is_refused_not_overwritten(
    world: World, second_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout_id = start(world, GATES)
    canary = world.link.devices()[0]
    leader = elector(world.engine, world, "worker-a")
    leader.campaign()
    healthy_wave(world, rollout_id, p95=25.0)  # the tick will roll it back
    follower = RolloutController(second_engine, Recorder(), TOPICS, world.clock)
    aborted = race(world, Stall(monkeypatch), lambda: follower.abort(rollout_id), leader)
    assert isinstance(aborted.exception(), ConflictError)
    assert "rolled_back" in str(aborted.exception())
    assert world.controller.get(rollout_id).state == RolloutState.ROLLED_BACK
    assert world.desired(canary) == "1.0.0"


# ------------------------------------------------------------------ alert hold times across failover


@pytest.fixture
def alert_fleet(db_url: str) -> Iterator[AlertFleet]:
    engine = create_engine_for_url(db_url)
    yield AlertFleet(engine, AlertClock())
    engine.dispose()


def test_a_new_leader_continues_an_alert_hold_time(alert_fleet: AlertFleet) -> None:
    fleet = alert_fleet
    rules = AlertRules(**ERRORS_ONLY, hold={"error_rate": RuleHold(for_s=300, resolve_for_s=120)})
    a = AlertEngine(fleet.engine, FakeLink(), "fleet/alerts", rules, clock=fleet.clock)
    fleet.status("cam-1")
    a.evaluate()
    # Bad every minute from 0 s; a judges them all: pending since 0 s, nothing open yet.
    for second in (0, 60, 120, 180, 240):
        fleet.clock.at(second)
        fleet.window("cam-1", 12)
    assert a.evaluate() == ([], [])
    # a dies; b, a fresh process, leads from 301 s: the hold started at 0 s, so it opens now,
    # not 300 s after the newest window it finds (240 s).
    b = AlertEngine(fleet.engine, FakeLink(), "fleet/alerts", rules, clock=fleet.clock)
    fleet.clock.at(301)
    opened, _ = b.evaluate()
    assert [(x.rule, x.opened_at) for x in opened] == [("error_rate", fleet.clock.now)]
    # Resolving holds too: good from 360 s, b sees it clearing; c takes over and resolves at 480 s.
    fleet.clock.at(360)
    fleet.window("cam-1", 0)
    assert b.evaluate() == ([], [])
    c = AlertEngine(fleet.engine, FakeLink(), "fleet/alerts", rules, clock=fleet.clock)
    fleet.clock.at(480)
    _, resolved = c.evaluate()
    assert [x.resolved_at for x in resolved] == [fleet.clock.now]
    assert list_alerts(fleet.engine, AlertState.OPEN) == []


def test_a_stale_alert_leader_writes_nothing(alert_fleet: AlertFleet) -> None:
    fleet = alert_fleet
    rules = AlertRules(**ERRORS_ONLY)
    now = fleet.clock
    a_lease = LeaderElector(fleet.engine, lease_s=LEASE_S, renew_s=RENEW_S, holder="a", clock=now)
    b_lease = LeaderElector(fleet.engine, lease_s=LEASE_S, renew_s=RENEW_S, holder="b", clock=now)
    a_lease.campaign()
    token = a_lease.fence()
    a = AlertEngine(fleet.engine, FakeLink(), "fleet/alerts", rules, clock=now)
    fleet.status("cam-1")
    a.evaluate(token)
    fleet.clock.at(LEASE_S + 1)
    b_lease.campaign()
    fleet.window("cam-1", 12)
    with pytest.raises(StaleLeaderError):
        a.evaluate(token)
    assert list_alerts(fleet.engine, AlertState.ALL) == []
    # Nothing was lost either: the refused run's windows are judged by the next run that may write.
    opened, _ = a.evaluate(b_lease.fence())
    assert [x.rule for x in opened] == ["error_rate"]
    assert fleet.clock.now - opened[0].opened_at == timedelta(0)
