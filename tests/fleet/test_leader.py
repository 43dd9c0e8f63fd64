"""Leader election on a lease row, driven by an injected clock, on SQLite and on PostgreSQL; the
device list's latest-window table as the ingest keeps it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, select

from fleet.config import FleetConfig
from fleet.errors import FleetError
from fleet.leader import LeaderElector, cluster_view
from fleet.storage import create_engine_for_url, repository
from fleet.storage.leases import acquire, get_lease
from fleet.storage.records import Decoded
from fleet.storage.schema import device_latest
from protocol.messages import TelemetryWindow
from tests.fleet.mqtt_helpers import telemetry as telemetry_payload
from tests.support.fleet import InProcessFleet

LEASE_S = 15.0
RENEW_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine_for_url(db_url)
    yield engine
    engine.dispose()


def contenders(engine: Engine, clock: Clock) -> tuple[LeaderElector, LeaderElector]:
    return tuple(  # type: ignore[return-value]
        LeaderElector(engine, lease_s=LEASE_S, renew_s=RENEW_S, holder=name, clock=clock)
        for name in ("worker-a", "worker-b")
    )


def test_one_of_two_contenders_leads_and_renews(engine: Engine) -> None:
    clock = Clock()
    a, b = contenders(engine, clock)
    assert a.campaign() and a.leading
    assert not b.campaign() and not b.leading
    for _ in range(10):  # renewals keep it: a minute later the lease is still a's, in its first term
        clock.advance(RENEW_S)
        assert a.campaign()
        assert not b.campaign()
    with engine.begin() as conn:
        lease = get_lease(conn, "maintenance")
    assert lease is not None
    assert (lease.holder, lease.term) == ("worker-a", 1)
    assert lease.expires_at == clock.now + timedelta(seconds=LEASE_S)
    assert lease.acquired_at == clock.now - timedelta(seconds=10 * RENEW_S)


def test_follower_takes_over_within_one_lease_after_the_leader_stops(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    a, b = contenders(engine, clock)
    caplog.set_level(logging.INFO, logger="fleet.leader")
    a.campaign()
    b.campaign()
    # a dies (no more renewals): b cannot take the lease before it expires...
    clock.advance(LEASE_S - 1)
    assert not b.campaign()
    # ...and a stepped back one renew interval before that, so the two never act at once.
    assert not a.leading
    clock.advance(1)
    assert b.campaign() and b.leading
    with engine.begin() as conn:
        lease = get_lease(conn, "maintenance")
    assert lease is not None and (lease.holder, lease.term) == ("worker-b", 2)
    # a comes back: it follows.
    assert not a.campaign()
    messages = [record.getMessage() for record in caplog.records]
    assert "leader election: worker-a now leads 'maintenance' (term 1)" in messages
    assert "leader election: worker-b follows worker-a (term 1)" in messages
    assert "leader election: worker-b now leads 'maintenance' (term 2)" in messages
    assert "leader election: worker-a follows worker-b (term 2)" in messages


def test_leader_steps_back_when_it_cannot_renew(engine: Engine) -> None:
    clock = Clock()
    a, _b = contenders(engine, clock)
    a.campaign()
    clock.advance(LEASE_S - RENEW_S - 0.001)
    assert a.leading
    clock.advance(0.002)  # one renew interval before the lease ends: no longer acts
    assert not a.leading


def test_released_lease_is_taken_at_once(engine: Engine) -> None:
    clock = Clock()
    a, b = contenders(engine, clock)
    a.campaign()
    a.release()
    assert not a.leading
    assert b.campaign()
    a.release()  # not holding: nothing happens
    clock.advance(RENEW_S)
    assert b.campaign()


def test_acquire_is_one_conditional_statement_per_contender(engine: Engine) -> None:
    clock = Clock()
    with engine.begin() as conn:
        first = acquire(conn, "other", "x", clock.now, 10)
        second = acquire(conn, "other", "y", clock.now, 10)
    assert first.holder == second.holder == "x"
    clock.advance(10)  # expires_at is exclusive: at that instant the lease is free
    with engine.begin() as conn:
        third = acquire(conn, "other", "y", clock.now, 10)
        assert get_lease(conn, "maintenance") is None  # leases are independent by name
    assert (third.holder, third.term) == ("y", 2)


def test_lease_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="more than twice leader_renew_s"):
        FleetConfig(trusted_keys=[], leader_lease_s=10, leader_renew_s=5)
    with pytest.raises(FleetError, match="more than twice the renew interval"):
        LeaderElector(None, lease_s=4, renew_s=2)  # type: ignore[arg-type]


def test_cluster_endpoint_names_the_leader(api: InProcessFleet) -> None:
    engine = api.context.engine
    assert api.client.get("/api/v1/cluster").json() == {
        "lease": "maintenance",
        "leader": None,
        "term": None,
        "leader_since": None,
        "expires_at": None,
        "this_worker": None,
        "this_worker_leads": False,
    }
    elector = LeaderElector(engine, lease_s=LEASE_S, renew_s=RENEW_S, holder="worker-a")
    elector.campaign()
    body = api.client.get("/api/v1/cluster").json()
    assert (body["leader"], body["term"], body["this_worker"]) == ("worker-a", 1, None)
    view = cluster_view(engine, elector, datetime.now(UTC))
    assert view.this_worker == "worker-a" and view.this_worker_leads
    # An expired lease names nobody.
    later = cluster_view(engine, None, datetime.now(UTC) + timedelta(seconds=LEASE_S + 1))
    assert later.leader is None and later.term == 1


# ---------------------------------------------------------------- the latest-window table


def _window(device_id: str, seq: int, cpu: float) -> Decoded:
    raw = telemetry_payload(device_id, seq=seq, cpu=cpu)
    message = TelemetryWindow.model_validate_json(raw)
    return Decoded(message=message, received_at=message.window_end, raw=raw)


def test_device_list_reads_the_newest_stored_window(engine: Engine) -> None:
    with engine.begin() as conn:
        repository.store_batch(
            conn, [_window("pi-1", 1, 10.0), _window("pi-1", 2, 20.0), _window("pi-2", 1, 5.0)]
        )
    with engine.begin() as conn:  # a redelivery of an older window changes nothing
        stored, duplicates, _ = repository.store_batch(conn, [_window("pi-1", 1, 10.0)])
        assert (stored, duplicates) == (0, 1)
        repository.store_decoded(conn, _window("pi-2", 2, 7.5))  # the one-message path too
    with engine.begin() as conn:
        latest = {row.device_id: row.cpu_percent for row in conn.execute(select(device_latest))}
    assert latest == {"pi-1": 20.0, "pi-2": 7.5}
    with engine.begin() as conn:
        repository.delete_device(conn, "pi-1")
        remaining = [row.device_id for row in conn.execute(select(device_latest))]
    assert remaining == ["pi-2"]
