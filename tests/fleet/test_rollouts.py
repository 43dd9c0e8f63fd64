"""Rollouts driven by an injected clock: waves, soak, gates from stored telemetry, promote/halt/rollback.

Device messages go through the ingester's own decode + store path (as if they came over MQTT), on
SQLite and on PostgreSQL; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from fleet.errors import ConflictError, FleetError, NotFoundError
from fleet.ingest.decode import Decoded, Received, decode
from fleet.rollout_spec import DeviceRolloutState, Gates, RolloutRequest, RolloutState, Target, wave_sizes
from fleet.rollouts.controller import RolloutController
from fleet.storage import create_engine_for_url, repository
from protocol.messages import (
    DeviceStatus,
    LatencySummary,
    PredictionHealth,
    Presence,
    ResourceUsage,
    TelemetryWindow,
    UpdateEvent,
)
from protocol.schema import ModelRef
from protocol.topics import Topics

TOPICS = Topics()
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OLD = ModelRef(name="digits", version="1.0.0")
NEW = ModelRef(name="digits", version="2.0.0")


@dataclass
class FakeClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Recorder:
    published: list[str] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        self.published.append(topic)
        return True

    def devices(self) -> list[str]:
        out = [TOPICS.parse_device_topic(t).device_id for t in self.published]
        self.published.clear()
        return out


@dataclass
class World:
    """A fleet database with devices that report what they run, and a controller on a fake clock."""

    engine: Engine
    clock: FakeClock
    link: Recorder
    controller: RolloutController
    seq: dict[str, int] = field(default_factory=dict)

    def store(self, topic: str, message: DeviceStatus | TelemetryWindow | UpdateEvent) -> None:
        item = decode(Received(topic, message.model_dump_json().encode(), self.clock()), TOPICS, 1 << 20)
        assert isinstance(item, Decoded), item
        with self.engine.begin() as conn:
            repository.store_decoded(conn, item)

    def status(self, device_id: str, model: ModelRef = OLD, presence: Presence = Presence.ONLINE) -> None:
        message = DeviceStatus(
            device_id=device_id, presence=presence, ts=self.clock(), agent_version="0.1.0", model=model
        )
        self.store(TOPICS.status(device_id), message)

    def status_in(
        self, device_id: str, model: ModelRef, update_state: str, ts: datetime | None = None
    ) -> None:
        """A status published in the middle of an update (``ts``: its device-clock time)."""
        message = DeviceStatus(
            device_id=device_id,
            presence=Presence.ONLINE,
            ts=ts or self.clock(),
            agent_version="0.1.0",
            model=model,
            update_state=update_state,  # type: ignore[arg-type]
        )
        self.store(TOPICS.status(device_id), message)

    def window(  # noqa: PLR0913 - one window's figures, keyword-only
        self,
        device_id: str,
        model: ModelRef,
        *,
        p95: float = 10.0,
        errors: int = 0,
        drift: float = 0.05,
        low_conf: float = 0.05,
        oor: float = 0.0,
        input_drift: float = 0.5,
        stuck: int = 0,
        end: datetime | None = None,
    ) -> None:
        seq = self.seq.get(device_id, 0)
        self.seq[device_id] = seq + 1
        end = end or self.clock()
        message = TelemetryWindow(
            device_id=device_id,
            seq=seq,
            window_start=end - timedelta(seconds=60),
            window_end=end,
            model=model,
            requests=100,
            errors={"inference": errors} if errors else {},
            latency_ms=LatencySummary(p50=p95 / 2, p95=p95, p99=p95 * 1.2, max=p95 * 2),
            resources=ResourceUsage(
                cpu_percent=20,
                process_rss_bytes=1 << 20,
                memory_used_percent=30,
                memory_available_bytes=1 << 30,
            ),
            uptime_s=1000,
            prediction=PredictionHealth(
                predictions=100,
                drift_psi=drift,
                low_confidence_share=low_conf,
                out_of_range_share=oor,
                input_drift=input_drift,
                stuck_features=stuck,
            ),
        )
        self.store(TOPICS.telemetry(device_id), message)

    def install(self, device_id: str, model: ModelRef = NEW) -> None:
        """What a good agent does: commit the target and report it."""
        event = UpdateEvent(device_id=device_id, ts=self.clock(), update_id="u", state="commit", target=model)
        self.store(TOPICS.events(device_id), event)

    def agent_rollback(self, device_id: str) -> None:
        event = UpdateEvent(
            device_id=device_id,
            ts=self.clock(),
            update_id="u",
            state="rollback",
            target=NEW,
            previous=OLD,
            ok=False,
            reason="probation: error rate 40% over 5%",
        )
        self.store(TOPICS.events(device_id), event)

    def desired(self, device_id: str) -> str | None:
        with self.engine.begin() as conn:
            assignment = repository.desired_for(conn, device_id)
        return None if assignment is None else assignment.model.version


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    engine = create_engine_for_url(db_url)
    clock = FakeClock()
    link = Recorder()
    with engine.begin() as conn:
        for version in ("1.0.0", "2.0.0"):
            repository.insert_model(
                conn,
                repository.NewModel(
                    name="digits",
                    version=version,
                    sha256=("a" if version == "1.0.0" else "b") * 64,
                    size=10,
                    task="classification",
                    quantization="int8",
                    key_id="k",
                    created_at=T0,
                    path="/dev/null",
                    manifest={},
                ),
            )
        repository.set_desired(conn, "*", "digits", "1.0.0")
    w = World(engine, clock, link, RolloutController(engine, link, TOPICS, clock))
    # 20 devices on the old model with an hour of history (p95 10 ms), two of them tagged "lab".
    for i in range(20):
        w.status(f"d{i:02d}")
        for minutes in range(60, 0, -10):
            w.window(f"d{i:02d}", OLD, end=T0 - timedelta(minutes=minutes))
    yield w
    engine.dispose()


GATES = Gates(soak_s=600, install_timeout_s=1800)


def start(world: World, gates: Gates = GATES, target: Target | None = None) -> int:
    request = RolloutRequest(name="digits", version="2.0.0", target=target or Target(all=True), gates=gates)
    return world.controller.start(request).id


def healthy_wave(world: World, rollout_id: int, **window: float) -> list[str]:
    """Devices assigned so far install the model and report one window each, then soak passes."""
    view = world.controller.get(rollout_id)
    with world.engine.begin() as conn:
        from sqlalchemy import select

        from fleet.storage.schema import rollout_devices

        assigned = list(
            conn.execute(
                select(rollout_devices.c.device_id).where(
                    rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.assigned_at.is_not(None)
                )
            ).scalars()
        )
    world.clock.advance(60)
    for device_id in assigned:
        world.install(device_id)
        for _ in range(view.gates.min_windows_per_device):
            world.window(device_id, NEW, **window)  # type: ignore[arg-type]
    world.clock.advance(view.gates.soak_s)
    return assigned


def test_wave_sizes() -> None:
    assert wave_sizes(["1", "10%", "50%", "100%"], 20) == [1, 2, 10, 20]
    assert wave_sizes(["1", "10%", "50%", "100%"], 3) == [1, 2, 3]
    assert wave_sizes(["1", "10%", "50%", "100%"], 1) == [1]
    assert wave_sizes(["5", "10"], 30) == [5, 10, 30]


def test_healthy_rollout_goes_through_four_waves(world: World) -> None:
    rollout_id = start(world)
    view = world.controller.get(rollout_id)
    assert view.waves == [1, 2, 10, 20] and view.state == RolloutState.RUNNING
    canary = world.link.devices()
    assert len(canary) == 1 and world.desired(canary[0]) == "2.0.0"
    assert sum(world.desired(f"d{i:02d}") == "2.0.0" for i in range(20)) == 1

    world.controller.tick()  # soak not over: nothing moves
    assert world.controller.get(rollout_id).wave == 0
    for wave, size in enumerate([2, 10, 20]):
        healthy_wave(world, rollout_id)
        world.controller.tick()
        view = world.controller.get(rollout_id)
        assert view.wave == wave + 1, view.reason
        assert view.devices_assigned == size
        assert len(world.link.devices()) == size - [1, 2, 10][wave]
    healthy_wave(world, rollout_id)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.COMPLETED, view.reason
    assert view.devices_on_target == 20
    assert view.last_gates is not None and all(g.ok for g in view.last_gates)


def test_slow_model_is_rolled_back_at_the_first_wave(world: World) -> None:
    rollout_id = start(world)
    canary = world.link.devices()[0]
    healthy_wave(world, rollout_id, p95=25.0)  # 2.5x the previous model's p95
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.ROLLED_BACK
    assert view.reason is not None and "latency_p95_ratio" in view.reason
    # The verdict names the measured value, the limit and the sample it was measured on.
    assert "p95 ratio 2.50 > 1.50" in view.reason, view.reason
    assert "over 3 windows / 300 requests" in view.reason, view.reason
    failed = {g.gate for g in view.last_gates or [] if not g.ok}
    assert failed == {"latency_p95_ratio"}
    assert world.desired(canary) == "1.0.0"  # back on the fleet default
    assert world.link.devices() == [canary]  # told to check
    assert view.devices_assigned == 1


@pytest.mark.parametrize(
    ("window", "gate"),
    [
        ({"errors": 10}, "error_rate"),
        ({"drift": 0.6}, "drift_psi"),
        ({"low_conf": 0.7}, "low_confidence_share"),
        ({"oor": 0.5}, "out_of_range_share"),
        ({"input_drift": 12.0}, "drifted_share"),
        ({"stuck": 1}, "drifted_share"),
    ],
)
def test_each_health_gate_halts(world: World, window: dict[str, float], gate: str) -> None:
    rollout_id = start(world, Gates(soak_s=300, on_failure="halt"))
    canary = world.link.devices()[0]
    healthy_wave(world, rollout_id, **window)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.HALTED
    assert {g.gate for g in view.last_gates or [] if not g.ok} == {gate}
    assert world.desired(canary) == "2.0.0"  # halt keeps what it gave; an operator may roll back
    world.controller.rollback(rollout_id)
    assert world.desired(canary) == "1.0.0"


def test_agent_rollback_fails_the_wave_before_the_soak_ends(world: World) -> None:
    rollout_id = start(world)
    canary = world.link.devices()[0]
    world.clock.advance(30)
    world.agent_rollback(canary)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.ROLLED_BACK
    assert view.reason is not None and "probation" in view.reason


def test_offline_devices_fail_the_wave(world: World) -> None:
    rollout_id = start(world, Gates(soak_s=60))
    healthy_wave(world, rollout_id)
    world.controller.tick()  # promoted to wave 2 (2 devices)
    assigned = healthy_wave(world, rollout_id)
    for device_id in assigned:
        world.status(device_id, NEW, Presence.OFFLINE)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.ROLLED_BACK
    assert "offline_share" in (view.reason or "")


def test_a_wave_that_never_installs_times_out(world: World) -> None:
    rollout_id = start(world, Gates(soak_s=60, install_timeout_s=600, on_failure="halt"))
    world.clock.advance(120)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.RUNNING and "1 installing" in (view.reason or "")
    world.clock.advance(600)
    world.controller.tick()
    view = world.controller.get(rollout_id)
    assert view.state == RolloutState.HALTED, view.reason
    assert "online and not serving digits 2.0.0 720 s after it was told" in (view.reason or "")
    assert view.device_states == {DeviceRolloutState.FAILED: 1, DeviceRolloutState.PENDING: 19}


def test_pause_resume_abort(world: World) -> None:
    rollout_id = start(world)
    world.controller.pause(rollout_id)
    healthy_wave(world, rollout_id)
    world.controller.tick()
    assert world.controller.get(rollout_id).wave == 0  # paused: not promoted
    with pytest.raises(ConflictError):
        world.controller.pause(rollout_id)
    view = world.controller.resume(rollout_id)
    assert view.state == RolloutState.RUNNING and view.wave_started_at == world.clock()
    world.controller.tick()
    assert world.controller.get(rollout_id).wave == 0  # the soak starts over after a resume
    world.clock.advance(600)
    world.controller.tick()
    assert world.controller.get(rollout_id).wave == 1
    view = world.controller.abort(rollout_id, "enough for today")
    assert view.state == RolloutState.ABORTED and view.reason == "enough for today"
    assert view.devices_assigned == 2  # aborted: the devices keep the new model
    with pytest.raises(ConflictError):
        world.controller.resume(rollout_id)


def test_targets_and_refusals(world: World) -> None:
    with world.engine.begin() as conn:
        repository.upsert_device_meta(conn, "d03", group="line-1", tags=["lab", "cam"], now=T0)
        repository.upsert_device_meta(conn, "d04", group="line-1", tags=["cam"], now=T0)
    tagged = world.controller.start(
        RolloutRequest(name="digits", version="2.0.0", target=Target(tags=["lab"]), gates=GATES)
    )
    assert tagged.devices_total == 1 and world.link.devices() == ["d03"]
    with pytest.raises(ConflictError, match="already in an active rollout"):
        world.controller.start(
            RolloutRequest(name="digits", version="2.0.0", target=Target(group="line-1"), gates=GATES)
        )
    world.controller.abort(tagged.id)
    grouped = world.controller.start(
        RolloutRequest(name="digits", version="2.0.0", target=Target(group="line-1"), gates=GATES)
    )
    assert grouped.devices_total == 2
    with pytest.raises(NotFoundError, match=r"no model digits 9\.9\.9"):
        world.controller.start(RolloutRequest(name="digits", version="9.9.9", target=Target(all=True)))
    with pytest.raises(NotFoundError, match="unknown device"):
        world.controller.start(
            RolloutRequest(name="digits", version="2.0.0", target=Target(devices=["nope"]))
        )
    with pytest.raises(FleetError, match="selects no known device"):
        world.controller.start(RolloutRequest(name="digits", version="2.0.0", target=Target(group="x")))
    with pytest.raises(NotFoundError):
        world.controller.get(9999)
