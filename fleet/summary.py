"""Retained JSON summary topics for other dashboards (Grafana's MQTT source, Node-RED, Home Assistant).

``fleet/summary``: devices, online, model versions in the fleet, open alerts, active rollouts.
``fleet/devices/{id}/health``: one device's latest state. Optional Home Assistant MQTT discovery
configs point sensors at the health topics. Only changed payloads are published.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, func, select

from fleet.deploy import Publisher
from fleet.rollouts.spec import ACTIVE_STATES
from fleet.storage.repository import list_devices
from fleet.storage.schema import alerts, rollouts
from fleet.views import DeviceView
from protocol.topics import Topics

HA_PREFIX = "homeassistant"
HA_SENSORS = (
    ("latency_p95", "p95 latency", "ms", None),
    ("cpu_percent", "CPU", "%", None),
    ("memory_used_percent", "memory", "%", None),
    ("temperature_c", "temperature", "°C", "temperature"),
    ("drift_psi", "drift PSI", None, None),
    ("presence", "presence", None, None),
)


class FleetSummary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: int
    online: int
    offline: int
    models: dict[str, int]
    """``name version`` -> devices running it."""
    open_alerts: int
    active_rollouts: int


def summarize(engine: Engine) -> tuple[FleetSummary, list[DeviceView]]:
    with engine.begin() as conn:
        devices = list_devices(conn)
        open_alerts = conn.execute(
            select(func.count()).select_from(alerts).where(alerts.c.resolved_at.is_(None))
        ).scalar_one()
        active = conn.execute(
            select(func.count())
            .select_from(rollouts)
            .where(rollouts.c.state.in_([s.value for s in ACTIVE_STATES]))
        ).scalar_one()
    models = Counter(f"{d.model.name} {d.model.version}" if d.model else "none" for d in devices)
    online = sum(1 for d in devices if d.presence == "online")
    summary = FleetSummary(
        devices=len(devices),
        online=online,
        offline=len(devices) - online,
        models=dict(sorted(models.items())),
        open_alerts=open_alerts,
        active_rollouts=active,
    )
    return summary, devices


def device_health(device: DeviceView) -> dict[str, Any]:
    window = device.telemetry
    error_rate = window.errors / window.requests if window and window.requests else None
    return {
        "device_id": device.device_id,
        "presence": device.presence,
        "last_seen": device.last_seen.isoformat(),
        "model": f"{device.model.name} {device.model.version}" if device.model else None,
        "desired": f"{device.desired.name} {device.desired.version}" if device.desired else None,
        "update_state": device.update_state,
        "latency_p95": window.latency_p95 if window else None,
        "error_rate": error_rate,
        "cpu_percent": window.cpu_percent if window else None,
        "memory_used_percent": window.memory_used_percent if window else None,
        "temperature_c": window.temperature_c if window else None,
        "drift_psi": window.drift_psi if window else None,
        "low_confidence_share": window.low_confidence_share if window else None,
    }


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
        if self._last.get(topic) != payload and self.publisher.publish(topic, payload, qos=1, retain=True):
            self._last[topic] = payload

    def publish(self) -> FleetSummary:
        summary, devices = summarize(self.engine)
        self._send(self.topics.fleet_summary, summary.model_dump(mode="json"))
        for device in devices:
            health_topic = self.topics.device_health(device.device_id)
            self._send(health_topic, device_health(device))
            if self.homeassistant:
                for key, name, unit, device_class in HA_SENSORS:
                    config: dict[str, Any] = {
                        "name": name,
                        "unique_id": f"edgefleet_{device.device_id}_{key}",
                        "state_topic": health_topic,
                        "value_template": f"{{{{ value_json.{key} }}}}",
                        "device": {
                            "identifiers": [f"edgefleet_{device.device_id}"],
                            "name": device.device_id,
                        },
                    }
                    if unit:
                        config["unit_of_measurement"] = unit
                    if device_class:
                        config["device_class"] = device_class
                    safe = device.device_id.replace(".", "_")
                    self._send(f"{HA_PREFIX}/sensor/edgefleet_{safe}/{key}/config", config)
        return summary
