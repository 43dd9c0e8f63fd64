"""Retained JSON summary topics for other dashboards (Grafana's MQTT source, Node-RED, Home Assistant).

``fleet/summary``: devices, online, model versions in the fleet, open alerts, active rollouts.
``fleet/devices/{id}/health``: one device's latest state. Optional Home Assistant MQTT discovery
configs point sensors at the health topics. Only changed payloads are published.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine

from fleet.deploy import Publisher, was_refused
from fleet.storage import repository
from fleet.storage.metrics import METRICS, Sensor
from fleet.views import DeviceView, FleetSummary
from protocol.topics import HOMEASSISTANT_PREFIX, Topics


def summarize(engine: Engine) -> tuple[FleetSummary, list[DeviceView]]:
    with engine.begin() as conn:
        return repository.summarize(conn)


def device_health(device: DeviceView) -> dict[str, Any]:
    """The health topic's document: presence and models, then every metric marked ``health``."""
    window = device.telemetry
    error_rate = window.errors / window.requests if window and window.requests else None
    return {
        "device_id": device.device_id,
        "presence": device.presence,
        "last_seen": device.last_seen.isoformat() if device.last_seen else None,
        "model": f"{device.model.name} {device.model.version}" if device.model else None,
        "desired": f"{device.desired.name} {device.desired.version}" if device.desired else None,
        "update_state": device.update_state,
        "error_rate": error_rate,
        **{metric.name: window.value(metric.name) if window else None for metric in METRICS if metric.health},
    }


def homeassistant_configs(
    device_id: str,
    health_topic: str,
    topics: Topics | None = None,
    discovery_prefix: str = HOMEASSISTANT_PREFIX,
) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config for each sensor of the metrics table, plus presence."""
    topics = topics or Topics()
    sensors = [(m.name, m.sensor) for m in METRICS if m.sensor is not None]
    sensors.append(("presence", Sensor("presence")))
    configs: dict[str, dict[str, Any]] = {}
    for key, sensor in sensors:
        config: dict[str, Any] = {
            "name": sensor.label,
            "unique_id": f"edgefleet_{device_id}_{key}",
            "state_topic": health_topic,
            "value_template": f"{{{{ value_json.{key} }}}}",
            "device": {"identifiers": [f"edgefleet_{device_id}"], "name": device_id},
        }
        if sensor.unit:
            config["unit_of_measurement"] = sensor.unit
        if sensor.device_class:
            config["device_class"] = sensor.device_class
        configs[topics.homeassistant_config(device_id, key, discovery_prefix)] = config
    return configs


class SummaryPublisher:
    def __init__(
        self, engine: Engine, publisher: Publisher, topics: Topics, homeassistant: bool = False
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.topics = topics
        self.homeassistant = homeassistant
        self._last: dict[str, bytes] = {}

    def _send(self, topic: str, document: dict[str, Any]) -> None:
        payload = json.dumps(document, sort_keys=True).encode()
        changed = self._last.get(topic) != payload or was_refused(self.publisher, topic)
        if changed and self.publisher.publish(topic, payload, qos=1, retain=True):
            self._last[topic] = payload

    def publish(self) -> FleetSummary:
        summary, devices = summarize(self.engine)
        self._send(self.topics.fleet_summary, summary.model_dump(mode="json"))
        for device in devices:
            health_topic = self.topics.device_health(device.device_id)
            self._send(health_topic, device_health(device))
            if self.homeassistant:
                configs = homeassistant_configs(device.device_id, health_topic, self.topics)
                for topic, config in configs.items():
                    self._send(topic, config)
        return summary
