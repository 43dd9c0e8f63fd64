"""The summary round at rest: a device whose health did not change is not published again, a changed
one is, and after the broker restarted without its retained messages everything is sent again."""

from __future__ import annotations

from edgefleet.mosquitto import MosquittoBroker
from fleet.ingest.ingester import Ingester
from fleet.storage.devices import get_device
from fleet.storage.summary import fleet_summary, health_rows, summarize
from fleet.summary import SummaryPublisher, device_health, health_from_row
from protocol.messages import Presence
from protocol.schema import ModelRef
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import TestClient, status, wait_for
from tests.fleet.mqtt_helpers import telemetry as telemetry_payload
from tests.fleet.test_alerts_summary import retained
from tests.support.fleet import RunningFleet

TOPICS = Topics()


class Recorder:
    """The fleet's own ingester as publisher, remembering each round's topics."""

    def __init__(self, ingester: Ingester) -> None:
        self.ingester = ingester
        self.topics: list[str] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        self.topics.append(topic)
        return self.ingester.publish(topic, payload, qos=qos, retain=retain)

    def refused(self, topic: str) -> bool:
        return self.ingester.refused(topic)

    @property
    def generation(self) -> int:
        return self.ingester.generation

    def round(self, summary: SummaryPublisher) -> set[str]:
        self.topics.clear()
        summary.publish()
        return set(self.topics)


def test_only_changed_devices_are_republished_and_all_after_a_broker_restart(
    fleet: RunningFleet, broker: MosquittoBroker, device: TestClient
) -> None:
    for device_id in ("cam-1", "cam-2", "cam-3"):
        device.publish(TOPICS.status(device_id), status(device_id), retain=True)
    wait_for(lambda: fleet.json("/api/v1/summary")["devices"] == 3)
    recorder = Recorder(fleet.server.ingester)
    summary = SummaryPublisher(fleet.server.engine, recorder, TOPICS, homeassistant=True, page=2)
    health = {device_id: TOPICS.device_health(device_id) for device_id in ("cam-1", "cam-2", "cam-3")}

    first = recorder.round(summary)
    assert set(health.values()) | {TOPICS.fleet_summary} <= first  # over two pages
    assert "homeassistant/sensor/edgefleet_cam-3/temperature_c/config" in first
    assert recorder.round(summary) == set()  # nothing changed: nothing is encoded or sent

    device.publish(TOPICS.status("cam-2"), status("cam-2", presence=Presence.OFFLINE), retain=True)
    wait_for(lambda: fleet.json("/api/v1/devices/cam-2")["presence"] == "offline")
    assert recorder.round(summary) == {health["cam-2"], TOPICS.fleet_summary}
    # The publish is queued, not yet at the broker: a dashboard subscribing now may still get the
    # old document, and gets the new one once it lands.
    wait_for(lambda: retained(broker, health["cam-2"])["presence"] == "offline", 5)

    generation = fleet.server.ingester.generation
    broker.stop()
    (broker.workdir / "mosquitto.db").unlink(
        missing_ok=True
    )  # the restarted broker lost every retained message
    broker.start()
    wait_for(lambda: fleet.server.ingester.generation != generation and fleet.server.ingester.connected, 15)
    again = recorder.round(summary)
    assert set(health.values()) | {TOPICS.fleet_summary} <= again
    assert "homeassistant/sensor/edgefleet_cam-1/temperature_c/config" in again
    wait_for(lambda: retained(broker, health["cam-1"])["presence"] == "online", 5)


def test_the_row_document_and_the_counted_summary_match_the_views(
    fleet: RunningFleet, device: TestClient
) -> None:
    """What the round builds from plain rows is what the views gave (one device with a window and a
    model, one without either)."""
    device.publish(
        TOPICS.status("cam-1"), status("cam-1", model=ModelRef(name="digits", version="1.0.0")), retain=True
    )
    device.publish(TOPICS.telemetry("cam-1"), telemetry_payload("cam-1", seq=0, p50=4.0))
    device.publish(TOPICS.status("cam-2"), status("cam-2", presence=Presence.OFFLINE), retain=True)
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 3)
    with fleet.server.engine.begin() as conn:
        rows = health_rows(conn, None, 10)
        for row in rows:
            view = get_device(conn, row[0])
            assert view is not None and health_from_row(row) == device_health(view)
        assert fleet_summary(conn) == summarize(conn)[0]
