"""The MQTT ingester against a real Mosquitto and a real SQLite file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from edgefleet.mosquitto import MosquittoBroker
from fleet.storage import repository
from fleet.storage.schema import telemetry
from protocol.messages import Presence
from protocol.schema import ModelRef
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import (
    TestClient,
    status,
    update_event,
    wait_for,
)
from tests.fleet.mqtt_helpers import (
    telemetry as telemetry_payload,
)
from tests.support.fleet import RunningFleet, fleet_config, running_fleet

TOPICS = Topics()
V1 = ModelRef(name="digits", version="1.0.0")
V2 = ModelRef(name="digits", version="2.0.0", sha256="ab" * 32)


def device_view(fleet: RunningFleet, device_id: str) -> dict[str, Any] | None:
    response = fleet.get(f"/api/v1/devices/{device_id}")
    return response.json() if response.status_code == 200 else None


def test_status_telemetry_and_events_are_stored(fleet: RunningFleet, device: TestClient) -> None:
    device.publish(TOPICS.status("pi-1"), status("pi-1", model=V1), retain=True)
    device.publish(TOPICS.telemetry("pi-1"), telemetry_payload("pi-1", seq=0, p50=2.0, cpu=10.0))
    device.publish(TOPICS.telemetry("pi-1"), telemetry_payload("pi-1", seq=1, p50=3.0, cpu=55.5))
    for state in ("download", "verify", "activate", "commit"):
        device.publish(TOPICS.events("pi-1"), update_event("pi-1", state, V2))

    def committed() -> dict[str, Any] | None:
        view = device_view(fleet, "pi-1")
        return view if view and view["update_state"] == "commit" else None

    view = wait_for(committed)
    assert view is not None
    assert view["presence"] == "online"
    assert view["agent_version"] == "0.1.0" and view["runtime"] == "tflite-runtime 2.14.0"
    assert view["model"] == {"name": "digits", "version": "2.0.0", "sha256": V2.sha256}
    summary = view["telemetry"]
    assert (summary["latency_p50"], summary["latency_p95"], summary["latency_p99"]) == (3.0, 6.0, 9.0)
    assert summary["cpu_percent"] == 55.5 and summary["process_rss_bytes"] == 52_428_800
    assert summary["memory_used_percent"] == 41.0 and summary["temperature_c"] == 48.5

    listed = fleet.json("/api/v1/devices")
    assert [d["device_id"] for d in listed] == ["pi-1"]
    assert listed[0]["telemetry"]["cpu_percent"] == 55.5

    windows = fleet.json("/api/v1/devices/pi-1/telemetry?limit=1")
    assert len(windows) == 1 and windows[0]["seq"] == 1 and windows[0]["payload"]["requests"] == 120
    events = fleet.json("/api/v1/devices/pi-1/events?limit=10")
    assert [e["state"] for e in events] == ["commit", "activate", "verify", "download"]

    # The last will: presence goes offline.
    device.publish(TOPICS.status("pi-1"), status("pi-1", presence=Presence.OFFLINE, model=V2), retain=True)
    wait_for(lambda: device_view(fleet, "pi-1")["presence"] == "offline")  # type: ignore[index]

    stats = fleet.json("/api/v1/stats")
    assert stats["stored"] == 8 and stats["dead_lettered"] == {} and stats["manual_ack"] is True
    wait_for(lambda: fleet.json("/api/v1/stats")["acked"] == 8)


def test_bad_messages_are_dead_lettered_and_ingestion_goes_on(
    fleet: RunningFleet, device: TestClient
) -> None:
    device.publish(TOPICS.telemetry("pi-2"), b"{not json")
    device.publish(TOPICS.telemetry("pi-2"), b'{"kind": "telemetry", "device_id": "pi-2"}')
    device.publish(TOPICS.telemetry("pi-2"), telemetry_payload("someone-else"))
    device.publish(TOPICS.telemetry("pi-2"), b"x" * (256 * 1024 + 1))
    device.publish(TOPICS.status("pi-2"), status("pi-2"))

    wait_for(lambda: device_view(fleet, "pi-2"))
    stats = fleet.json("/api/v1/stats")
    assert stats["dead_lettered"] == {
        "malformed-json": 1,
        "schema": 1,
        "device-id-mismatch": 1,
        "oversize": 1,
    }
    letters = {d["reason"]: d for d in fleet.json("/api/v1/dead-letters")}
    assert set(letters) == {"malformed-json", "schema", "device-id-mismatch", "oversize"}
    assert letters["malformed-json"]["payload_prefix"] == "{not json"
    assert letters["device-id-mismatch"]["topic"] == TOPICS.telemetry("pi-2")
    assert "someone-else" in letters["device-id-mismatch"]["detail"]
    assert letters["oversize"]["payload_size"] == 256 * 1024 + 1
    assert len(letters["oversize"]["payload_prefix"]) <= 512
    assert "TelemetryWindow" in letters["schema"]["detail"]
    # Every one of them was acknowledged: nothing is redelivered forever.
    wait_for(lambda: fleet.json("/api/v1/stats")["acked"] == 5)


def test_messages_sent_while_the_ingester_is_away_arrive_after_it_returns(
    fleet: RunningFleet, device: TestClient
) -> None:
    device.publish(TOPICS.status("pi-3"), status("pi-3"), retain=True)
    wait_for(lambda: device_view(fleet, "pi-3"))
    ingester = fleet.server.ingester
    ingester.stop()
    for seq in range(5):
        device.publish(TOPICS.telemetry("pi-3"), telemetry_payload("pi-3", seq=seq))
    ingester.start()
    assert ingester.wait_connected(10)
    rows = wait_for(lambda: len(fleet.json("/api/v1/devices/pi-3/telemetry")) == 5 and 5)
    assert rows == 5


def test_broker_restart_reconnects_and_redelivery_is_stored_once(
    fleet: RunningFleet, broker: MosquittoBroker
) -> None:
    broker.restart()
    assert fleet.server.ingester.wait_connected(15), "the ingester did not reconnect"
    wait_for(lambda: fleet.server.ingester.connected, 15)
    publisher = TestClient(broker.host, broker.port)
    try:
        publisher.publish(TOPICS.status("pi-4"), status("pi-4"), retain=True)
        publisher.publish(TOPICS.telemetry("pi-4"), telemetry_payload("pi-4", seq=7))
        publisher.publish(TOPICS.telemetry("pi-4"), telemetry_payload("pi-4", seq=7))  # a redelivery
        wait_for(lambda: fleet.json("/api/v1/stats")["duplicates"] == 1, 15)
    finally:
        publisher.close()
    with fleet.server.engine.begin() as conn:
        count = conn.execute(
            select(func.count()).select_from(telemetry).where(telemetry.c.device_id == "pi-4")
        )
        assert count.scalar_one() == 1


def test_unacknowledged_messages_are_redelivered(
    fleet: RunningFleet, device: TestClient, monkeypatch: Any
) -> None:
    """With manual_ack, what was stored but not acknowledged comes back when the session resumes."""
    ingester = fleet.server.ingester
    monkeypatch.setattr(ingester, "_ack", lambda batch: None)  # as if the fleet died before acking
    for seq in range(3):
        device.publish(TOPICS.telemetry("pi-5"), telemetry_payload("pi-5", seq=seq))
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 3)
    ingester.stop()
    monkeypatch.undo()
    ingester.start()
    assert ingester.wait_connected(10)
    # The broker resends all three; they are recognised and stored once, then acknowledged.
    wait_for(lambda: fleet.json("/api/v1/stats")["duplicates"] == 3, 15)
    wait_for(lambda: fleet.json("/api/v1/stats")["acked"] == 3)
    assert len(fleet.json("/api/v1/devices/pi-5/telemetry")) == 3
    # Those acknowledgements (one buffer of PUBACKs for the batch) reached the broker: after another
    # restart nothing comes back, and a new window behind them is stored.
    ingester.stop()
    ingester.start()
    assert ingester.wait_connected(10)
    device.publish(TOPICS.telemetry("pi-5"), telemetry_payload("pi-5", seq=3))
    wait_for(lambda: fleet.json("/api/v1/stats")["acked"] == 4, 15)
    stats = fleet.json("/api/v1/stats")  # counted since the ingester was made, across restarts
    assert (stats["stored"], stats["duplicates"]) == (4, 3)


def test_database_outage_is_retried(
    tmp_path: Path,
    broker: MosquittoBroker,
    signing_keys: tuple[Path, Path],
    db_url: str,
    device: TestClient,
    monkeypatch: Any,
) -> None:
    """The writer thread, so the patch reaches it (a child writer runs the same ``BatchStore``)."""
    config = fleet_config(tmp_path, broker, signing_keys, db_url)
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"writer": "thread"})})
    with running_fleet(config) as fleet:
        _outage_is_retried(fleet, device, monkeypatch)


def _outage_is_retried(fleet: RunningFleet, device: TestClient, monkeypatch: Any) -> None:
    assert fleet.server.ingester.writer == "thread"
    real = repository.store_batch
    failures = iter([True, True])

    def flaky(conn: Any, items: Any, *args: Any) -> Any:
        if next(failures, False):
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real(conn, items, *args)

    monkeypatch.setattr(repository, "store_batch", flaky)
    device.publish(TOPICS.telemetry("pi-6"), telemetry_payload("pi-6", seq=0))
    wait_for(lambda: len(fleet.json("/api/v1/devices/pi-6/telemetry")) == 1, 15)
    assert fleet.json("/api/v1/stats")["dead_lettered"] == {}
