"""Per-device rollout states on an injected clock: offline devices stay pending and install when they
return, the deadline skips them, the gates wait for a minimum sample, judge on the fleet's receive
time, and the fleet tells what a device serves from what it committed. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fleet.rollout_spec import DeviceRolloutState, Gates, RolloutRequest, RolloutState, Target
from fleet.storage import repository
from protocol.messages import Presence, UpdateEvent
from tests.fleet.test_rollouts import NEW, OLD, TOPICS, World, world

__all__ = ["world"]  # the fixture, imported for pytest

State = DeviceRolloutState
TRIO = ["d00", "d01", "d02"]
QUICK = Gates(soak_s=60, install_timeout_s=600)


def start_trio(world: World, gates: Gates = QUICK, deadline_s: float = 86400) -> int:
    """d02 is powered off; an ``--all``-style rollout of d00-d02 in waves 1, 100%."""
    world.status("d02", OLD, Presence.OFFLINE)
    request = RolloutRequest(
        name="digits",
        version="2.0.0",
        target=Target(devices=TRIO),
        waves=["1", "100%"],
        gates=gates,
        deadline_s=deadline_s,
    )
    return world.controller.start(request).id


def states(world: World, rollout_id: int) -> dict[str, DeviceRolloutState]:
    return {d.device_id: d.state for d in world.controller.devices(rollout_id)}


def report(world: World, device_id: str, windows: int = 3, **figures: float) -> None:
    for _ in range(windows):
        world.window(device_id, NEW, **figures)  # type: ignore[arg-type]


def pass_both_waves(world: World, rollout_id: int) -> None:
    """Wave 1 (d00 or d01) and wave 2 (the other online one) install, report and pass."""
    canary = world.link.devices()
    assert len(canary) == 1 and canary[0] in ("d00", "d01")
    world.install(canary[0])
    report(world, canary[0])
    world.clock.advance(60)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.wave == 1, view.reason
    told = world.link.devices()
    assert told == [d for d in ("d00", "d01") if d != canary[0]]  # d02 is offline: not told
    assert states(world, rollout_id)["d02"] is State.PENDING
    world.install(told[0])
    report(world, told[0])
    world.clock.advance(60)
    world.controller.tick()


def test_an_offline_device_does_not_fail_the_rollout_and_installs_when_it_returns(world: World) -> None:
    rollout_id = start_trio(world)
    pass_both_waves(world, rollout_id)
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.RUNNING, view.reason  # not rolled back, not complete
    assert "all waves passed; waiting for 1 devices" in (view.reason or ""), view.reason
    assert view.last_gates is not None and all(g.ok for g in view.last_gates)
    assert states(world, rollout_id) == {"d00": State.DONE, "d01": State.DONE, "d02": State.PENDING}
    assert world.desired("d02") == "2.0.0"  # it finds the model on its first poll

    world.clock.advance(3600)
    world.status("d02", OLD, Presence.ONLINE)  # back: told at the next tick
    world.controller.tick()
    assert world.link.devices() == ["d02"]
    assert states(world, rollout_id)["d02"] is State.INSTALLING

    world.clock.advance(30)
    world.window("d02", NEW)  # activated: the window says what serves
    world.controller.tick()
    assert states(world, rollout_id)["d02"] is State.PROBATION
    assert world.controller.get(rollout_id).state == RolloutState.RUNNING

    world.install("d02")
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.COMPLETED, view.reason
    assert view.reason == "completed: 3 done"
    assert view.device_states == {State.DONE: 3}


def test_past_the_deadline_offline_devices_are_skipped_and_the_rollout_completes(world: World) -> None:
    rollout_id = start_trio(world, deadline_s=7200)
    pass_both_waves(world, rollout_id)
    world.clock.advance(3600)
    world.controller.tick()
    assert world.controller.get(rollout_id).state == RolloutState.RUNNING  # deadline not reached yet
    world.clock.advance(3600)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.COMPLETED, view.reason
    assert view.reason == "completed: 2 done, 1 skipped-offline"
    skipped = {d.device_id: d for d in world.controller.devices(rollout_id)}["d02"]
    assert skipped.state is State.SKIPPED_OFFLINE and "offline (last seen" in (skipped.detail or "")
    assert world.desired("d02") == "1.0.0"  # never got it: back on what it had
    assert world.link.devices() == ["d02"]  # told (it sees the change whenever it polls)


def test_a_wave_whose_only_devices_are_offline_waits_for_them(world: World) -> None:
    """Every targeted device offline: nothing is judged and nothing fails until one returns."""
    world.status("d05", OLD, Presence.OFFLINE)
    request = RolloutRequest(name="digits", version="2.0.0", target=Target(devices=["d05"]), gates=QUICK)
    rollout_id = world.controller.start(request).id
    assert world.link.devices() == []
    world.clock.advance(5000)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.RUNNING and "no device reached the model" in (view.reason or "")
    world.status("d05", OLD, Presence.ONLINE)
    world.controller.tick()
    assert world.link.devices() == ["d05"]
    world.install("d05")
    report(world, "d05")
    world.clock.advance(60)
    world.controller.tick()
    assert world.controller.get(rollout_id).state == RolloutState.COMPLETED


def test_gates_give_no_verdict_until_the_minimum_sample(world: World) -> None:
    gates = Gates(soak_s=60, min_windows_per_device=5, min_requests_per_wave=400, on_failure="halt")
    request = RolloutRequest(name="digits", version="2.0.0", target=Target(devices=["d07"]), gates=gates)
    rollout_id = world.controller.start(request).id
    world.install("d07")
    report(world, "d07", windows=1, drift=0.9)  # one window of bad drift: no verdict on it
    world.clock.advance(120)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.RUNNING and view.last_gates is None
    assert "below the per-device minimum of 5 windows / 50 requests: d07: 1 windows / 100 requests" in (
        view.reason or ""
    ), view.reason
    report(world, "d07", windows=4, drift=0.9)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.HALTED, view.reason
    assert "mean drift PSI 0.900 > 0.250 over 5 windows / 500 requests" in (view.reason or ""), view.reason


def test_too_little_telemetry_halts_after_the_sample_wait(world: World) -> None:
    gates = Gates(soak_s=60, min_requests_per_wave=1000, max_sample_wait_s=600)
    request = RolloutRequest(name="digits", version="2.0.0", target=Target(devices=["d08"]), gates=gates)
    rollout_id = world.controller.start(request).id
    world.install("d08")
    report(world, "d08")
    world.clock.advance(120)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.RUNNING
    assert "300 requests from 1 devices, below the per-wave minimum of 3 / 1,000" in (view.reason or "")
    world.clock.advance(600)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.HALTED and "too little telemetry" in (view.reason or ""), view.reason
    assert world.desired("d08") == "2.0.0"  # halted, not rolled back: nothing was found wrong


@pytest.mark.parametrize(
    ("p95", "expected"), [(10.0, RolloutState.COMPLETED), (40.0, RolloutState.ROLLED_BACK)]
)
def test_a_device_whose_clock_is_an_hour_wrong_is_judged(
    world: World, p95: float, expected: RolloutState
) -> None:
    """Its windows say an hour before the rollout started; the fleet received them after it."""
    request = RolloutRequest(name="digits", version="2.0.0", target=Target(devices=["d09"]), gates=QUICK)
    rollout_id = world.controller.start(request).id
    world.clock.advance(60)
    world.install("d09")
    for _ in range(3):
        world.window("d09", NEW, p95=p95, end=world.clock() - timedelta(hours=1))
    world.clock.advance(60)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == expected, view.reason
    latency = {g.gate: g for g in view.last_gates or []}["latency_p95_ratio"]
    assert latency.value == pytest.approx(p95 / 10.0)
    assert "over 3 windows / 300 requests" in latency.detail


def test_an_agent_rollback_marks_the_device_failed(world: World) -> None:
    request = RolloutRequest(name="digits", version="2.0.0", target=Target(devices=["d10"]), gates=QUICK)
    rollout_id = world.controller.start(request).id
    world.clock.advance(30)
    world.agent_rollback("d10")
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.ROLLED_BACK
    assert "failed devices 1 > 0 (d10: rollback: probation: error rate 40% over 5%)" in (view.reason or "")
    (device,) = world.controller.devices(rollout_id)
    assert device.state is State.FAILED and device.detail == "rollback: probation: error rate 40% over 5%"


def test_serving_and_committed_are_told_apart(world: World) -> None:
    """Activation (status, then windows on the new model) changes what serves; commit what is
    committed; a late window or a re-delivered status from before changes nothing."""

    def device() -> tuple[str | None, str | None]:
        with world.engine.begin() as conn:
            view = repository.get_device(conn, "d11")
        assert view is not None
        serving = view.model.version if view.model else None
        committed = view.committed.version if view.committed else None
        return serving, committed

    assert device() == ("1.0.0", "1.0.0")
    world.clock.advance(10)
    world.status_in("d11", OLD, "activate")  # published as the switch starts: still the old model
    assert device() == ("1.0.0", "1.0.0")
    world.clock.advance(10)
    world.window("d11", NEW)
    assert device() == ("2.0.0", "1.0.0")  # on probation
    world.window("d11", OLD, end=world.clock() - timedelta(seconds=30))  # replayed from the outbox
    assert device() == ("2.0.0", "1.0.0")
    world.status_in("d11", NEW, "probation")  # a reconnect mid-probation
    assert device() == ("2.0.0", "1.0.0")
    world.clock.advance(10)
    world.install("d11")
    assert device() == ("2.0.0", "2.0.0")
    stale = UpdateEvent(
        device_id="d11", ts=world.clock() - timedelta(seconds=25), update_id="u", state="activate", target=NEW
    )
    world.store(TOPICS.events("d11"), stale)
    world.status_in("d11", OLD, "activate", ts=world.clock() - timedelta(seconds=25))  # retained, again
    assert device() == ("2.0.0", "2.0.0")
