"""Alerts (records, retained topic, a webhook to a real local HTTP receiver), summary topics, /metrics."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from edgefleet.mosquitto import MosquittoBroker
from fleet.alerts import AlertRules, alerts_topic
from protocol.messages import Presence
from protocol.schema import ModelRef
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import TestClient, status, update_event, wait_for
from tests.fleet.mqtt_helpers import telemetry as telemetry_payload
from tests.fleet.test_poison import recent_window
from tests.support.fleet import RunningFleet

TOPICS = Topics()
V2 = ModelRef(name="digits", version="2.0.0")


@pytest.fixture
def webhook() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.put(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def retained(broker: MosquittoBroker, topic: str) -> dict[str, Any]:
    """What a dashboard subscribing now gets first: the retained message (waits for it to exist)."""

    def fetch() -> dict[str, Any] | None:
        observer = TestClient(broker.host, broker.port)
        try:
            observer.subscribe(topic)
            message = observer.next_message()
            return json.loads(message.payload) if message.retain else None  # type: ignore[no-any-return]
        finally:
            observer.close()

    document: dict[str, Any] = wait_for(fetch, 5)
    return document


def test_alerts_open_resolve_publish_and_post(
    fleet: RunningFleet,
    broker: MosquittoBroker,
    device: TestClient,
    webhook: tuple[str, queue.Queue[dict[str, Any]]],
) -> None:
    url, posted = webhook
    engine = fleet.server.alerts
    engine.rules = AlertRules(offline_minutes=5, latency_p95_ms=50, drift_psi=None, webhook_url=url)
    device.publish(TOPICS.status("cam-1"), status("cam-1"), retain=True)
    device.publish(TOPICS.telemetry("cam-1"), telemetry_payload("cam-1", seq=0, p50=40.0))  # p95 80 ms
    device.publish(TOPICS.status("cam-2"), status("cam-2", presence=Presence.OFFLINE), retain=True)
    device.publish(TOPICS.events("cam-2"), update_event("cam-2", "rollback", V2))
    wait_for(lambda: len(fleet.json("/api/v1/devices")) == 2 and fleet.json("/api/v1/stats")["stored"] == 4)

    later = datetime.now(UTC) + timedelta(minutes=6)
    engine.clock = lambda: later
    opened, resolved = engine.evaluate()
    assert {(a.rule, a.device_id) for a in opened} == {
        ("latency_p95", "cam-1"),
        ("offline", "cam-1"),  # silent for 6 minutes as far as the fake clock knows
        ("offline", "cam-2"),
        ("rollback", "cam-2"),
    }
    assert resolved == []
    assert engine.evaluate() == ([], [])  # still true: nothing new
    records = fleet.json("/api/v1/alerts?open=true")
    assert len(records) == 4 and all(r["resolved_at"] is None for r in records)
    topic = retained(broker, alerts_topic(TOPICS))
    assert topic["open"] == 4 and {a["rule"] for a in topic["alerts"]} == {
        "latency_p95",
        "offline",
        "rollback",
    }
    hooks = [posted.get(timeout=5) for _ in range(4)]
    assert {h["state"] for h in hooks} == {"opened"} and {h["alert"]["rule"] for h in hooks} >= {"rollback"}

    # Back to the real clock, cam-1 sends a fast window: its alerts resolve, and cam-2 has been offline
    # for less than the 5 minutes; the rollback alert stays open for its hold time.
    engine.clock = lambda: datetime.now(UTC)
    device.publish(TOPICS.telemetry("cam-1"), telemetry_payload("cam-1", seq=1, p50=5.0))
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 5)
    opened, resolved = engine.evaluate()
    assert opened == [] and {(a.rule, a.device_id) for a in resolved} == {
        ("latency_p95", "cam-1"),
        ("offline", "cam-1"),
        ("offline", "cam-2"),
    }
    assert all(a.resolved_at is not None for a in resolved)
    assert {posted.get(timeout=5)["state"] for _ in range(3)} == {"resolved"}
    wait_for(lambda: retained(broker, alerts_topic(TOPICS))["open"] == 1)
    assert len(fleet.json("/api/v1/alerts")) == 4


def test_out_of_range_share_is_stored_charted_and_alerted(fleet: RunningFleet, device: TestClient) -> None:
    """The agent's share of inputs outside the baseline's range: a column, a series, an alert rule."""
    device.publish(TOPICS.status("cam-3"), status("cam-3"), retain=True)
    for seq, share in enumerate((0.05, 0.4)):
        document = json.loads(recent_window("cam-3", seq))  # within the series' reach
        document["prediction"] = {"predictions": 100, "out_of_range_share": share}
        device.publish(TOPICS.telemetry("cam-3"), json.dumps(document))
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 3)
    latest = fleet.json("/api/v1/devices/cam-3")["telemetry"]
    assert latest["out_of_range_share"] == 0.4
    series = fleet.json("/api/v1/devices/cam-3/series?hours=3&points=10")["series"]
    charted = [round(v, 3) for v in series["out_of_range_share"] if v is not None]
    assert charted in ([0.225], [0.05, 0.4])  # one bucket (averaged) or two
    engine = fleet.server.alerts
    engine.rules = AlertRules(offline_minutes=None, drift_psi=None, error_rate=None, out_of_range_share=0.3)
    engine.clock = lambda: datetime.now(UTC)
    opened, _ = engine.evaluate()
    assert [(a.rule, a.device_id, a.value) for a in opened] == [("out_of_range_share", "cam-3", 0.4)]
    engine.rules = AlertRules(offline_minutes=None, drift_psi=None, error_rate=None, out_of_range_share=0.5)
    assert [a.rule for a in engine.evaluate()[1]] == ["out_of_range_share"]  # resolved under a higher bar


def test_summary_topics_homeassistant_and_metrics(
    fleet: RunningFleet, broker: MosquittoBroker, device: TestClient
) -> None:
    device.publish(
        TOPICS.status("cam-1"), status("cam-1", model=ModelRef(name="digits", version="1.0.0")), retain=True
    )
    device.publish(TOPICS.telemetry("cam-1"), telemetry_payload("cam-1", seq=0, p50=4.0))
    device.publish(TOPICS.status("cam-2"), status("cam-2", presence=Presence.OFFLINE), retain=True)
    device.publish(TOPICS.telemetry("pi-x"), b"not json")
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 3)
    fleet.server.summary.homeassistant = True
    summary = fleet.server.summary.publish()
    assert summary.devices == 2 and summary.online == 1
    assert summary.models == {"digits 1.0.0": 1, "none": 1}
    assert retained(broker, TOPICS.fleet_summary) == summary.model_dump(mode="json")
    assert fleet.json("/api/v1/summary") == summary.model_dump(mode="json")
    health = retained(broker, TOPICS.device_health("cam-1"))
    assert (
        health["presence"] == "online" and health["latency_p95"] == 8.0 and health["model"] == "digits 1.0.0"
    )
    assert abs(health["error_rate"] - 1 / 120) < 1e-9
    discovery = retained(broker, "homeassistant/sensor/edgefleet_cam-1/temperature_c/config")
    assert discovery["state_topic"] == TOPICS.device_health("cam-1")
    assert discovery["value_template"] == "{{ value_json.temperature_c }}"
    assert discovery["device_class"] == "temperature"

    response = fleet.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'edgefleet_devices{presence="online"} 1.0' in text
    assert 'edgefleet_devices_by_model{model="digits",version="1.0.0"} 1.0' in text
    assert 'edgefleet_ingest_dead_lettered_total{reason="malformed-json"} 1.0' in text
    assert "edgefleet_ingest_stored_total 3.0" in text


def test_input_drift_windows_are_stored_and_alerted_every_one(
    fleet: RunningFleet, device: TestClient
) -> None:
    """The agent's drift tests travel in its compact form through the broker; every window is
    judged as stored: one drifted window between two clean ones still opens the alerts (by the
    default rules), which the next clean window resolves. A window without the new members (an
    older agent) is read."""
    from agent.telemetry import encode_window
    from protocol.messages import PredictionHealth, TelemetryWindow, parse_message

    engine = fleet.server.alerts
    engine.clock = lambda: datetime.now(UTC)
    engine.evaluate()  # the engine follows the table from here on
    device.publish(TOPICS.status("cam-4"), status("cam-4"), retain=True)
    healths = (
        PredictionHealth(
            predictions=100, input_drift=0.4, drift_feature=3, stuck_features=0, output_drift=0.2
        ),
        PredictionHealth(
            predictions=100, input_drift=12.5, drift_feature=7, stuck_features=2, output_drift=0.3
        ),
        PredictionHealth(
            predictions=100, input_drift=0.1, drift_feature=1, stuck_features=0, output_drift=0.1
        ),
        PredictionHealth(predictions=100, drift_psi=0.01),
    )
    for seq, health in enumerate(healths):
        window = parse_message(TelemetryWindow, recent_window("cam-4", seq))
        device.publish(
            TOPICS.telemetry("cam-4"), encode_window(window.model_copy(update={"prediction": health}))
        )
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 5)
    latest = fleet.json("/api/v1/devices/cam-4")["telemetry"]
    assert latest["input_drift"] is None and latest["drift_psi"] == 0.01  # the older agent's window
    series = fleet.json("/api/v1/devices/cam-4/series?hours=3&points=10")["series"]
    assert max(v for v in series["input_drift"] if v is not None) == 12.5
    engine.evaluate()
    alerts = [a for a in fleet.json("/api/v1/alerts?state=all") if a["device_id"] == "cam-4"]
    found = {(a["rule"], a["value"], a["resolved_at"] is not None) for a in alerts}
    assert found == {("input_drift", 12.5, True), ("stuck_features", 2.0, True)}
