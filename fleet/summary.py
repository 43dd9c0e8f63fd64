"""Retained JSON summary topics for other dashboards (Grafana's MQTT source, Node-RED, Home Assistant).

``fleet/summary``: devices, online, model versions in the fleet, open alerts, active rollouts.
``fleet/devices/{id}/health``: one device's latest state. Optional Home Assistant MQTT discovery
configs point sensors at the health topics. Only changed documents are published: the elected
worker runs this inside the serving process every ``summary_interval_s``, so a round at rest must
cost little. Each device's health columns are read as one plain row (a page at a time, yielding the
GIL between pages) and compared with the row its last accepted publish was made from; only a
changed device's document is built and encoded. Everything is sent again after a reconnect (the
broker may have restarted without its retained messages) and whatever the broker refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, Row

from fleet.deploy import Publisher, RefusalAware, connection_generation, was_refused
from fleet.storage import repository
from fleet.storage.metrics import METRICS, Sensor
from fleet.storage.summary import HEALTH_METRICS, fleet_summary, health_rows
from fleet.storage.times import utc
from fleet.views import DeviceView, FleetSummary
from protocol.topics import HOMEASSISTANT_PREFIX, Topics


def summarize(engine: Engine) -> tuple[FleetSummary, list[DeviceView]]:
    with engine.begin() as conn:
        return repository.summarize(conn)


def fleet_at_a_glance(engine: Engine) -> FleetSummary:
    """The ``fleet/summary`` document, counted by the database (no device is read into Python)."""
    with engine.begin() as conn:
        return fleet_summary(conn)


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


def _name(name: str | None, version: str | None) -> str | None:
    return None if name is None or version is None else f"{name} {version}"


def health_from_row(row: Row[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """``device_health``'s document straight from a ``health_rows`` row (no view is built)."""
    values: tuple[Any, ...] = tuple(row)
    device_id, presence, last_seen, model, version, want, want_version, update_state = values[:8]
    window_end, requests, errors = values[8:11]
    has_window = window_end is not None
    return {
        "device_id": device_id,
        "presence": presence,
        "last_seen": utc(last_seen).isoformat() if last_seen else None,
        "model": _name(model, version),
        "desired": _name(want, want_version),
        "update_state": update_state,
        "error_rate": errors / requests if has_window and requests else None,
        **{
            name: (None if value is None else float(value)) if has_window else None
            for name, value in zip(HEALTH_METRICS, values[11:], strict=True)
        },
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


HEALTH_PAGE = 500
"""Devices read, compared and published per step; the round yields the GIL between steps."""


class SummaryPublisher:
    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        topics: Topics,
        homeassistant: bool = False,
        *,
        page: int = HEALTH_PAGE,
        pause: Callable[[float], object] = time.sleep,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.topics = topics
        self.homeassistant = homeassistant
        self.page = page
        self.pause = pause
        self._last: dict[str, bytes] = {}
        self._rows: dict[str, tuple[Any, ...]] = {}
        """Per device: the health row its last accepted publish was made from (its digest)."""
        self._announced: dict[str, list[str]] = {}
        """Per device: the discovery topics whose configs the broker took."""
        self._generation: int | None = None

    def _send(self, topic: str, payload: bytes) -> bool:
        return self.publisher.publish(topic, payload, qos=1, retain=True)

    def _send_summary(self, document: dict[str, Any]) -> None:
        topic = self.topics.fleet_summary
        payload = json.dumps(document, sort_keys=True).encode()
        if (self._last.get(topic) != payload or was_refused(self.publisher, topic)) and self._send(
            topic, payload
        ):
            self._last[topic] = payload

    def _reconnected(self) -> None:
        """Forget what was sent when the publisher connected again since the last round."""
        generation = connection_generation(self.publisher)
        if generation != self._generation:
            self._last.clear()
            self._rows.clear()
            self._announced.clear()
        self._generation = generation

    def publish(self) -> FleetSummary:
        self._reconnected()
        summary = fleet_at_a_glance(self.engine)
        self._send_summary(summary.model_dump(mode="json"))
        refused = self.publisher.refused if isinstance(self.publisher, RefusalAware) else None
        after: str | None = None
        while True:
            with self.engine.begin() as conn:
                rows = health_rows(conn, after, self.page)
            for row in rows:
                self._device(row, refused)
            if len(rows) < self.page:
                return summary
            after = rows[-1][0]
            self.pause(0)  # lets the API's threads take the GIL between pages

    def _device(self, row: Row[Any], refused: Callable[[str], bool] | None) -> None:
        device_id: str = row[0]
        key = tuple(row)
        health_topic = self.topics.device_health(device_id)
        if self._rows.get(device_id) != key or (refused is not None and refused(health_topic)):
            payload = json.dumps(health_from_row(key), sort_keys=True).encode()
            if self._send(health_topic, payload):
                self._rows[device_id] = key
        if self.homeassistant:
            self._announce(device_id, health_topic, refused)

    def _announce(self, device_id: str, health_topic: str, refused: Callable[[str], bool] | None) -> None:
        """Discovery configs depend only on the device id: sent once per connection, again if refused."""
        sent = self._announced.get(device_id)
        if sent is not None and (refused is None or not any(refused(topic) for topic in sent)):
            return
        configs = homeassistant_configs(device_id, health_topic, self.topics)
        accepted = [
            topic
            for topic, config in configs.items()
            if self._send(topic, json.dumps(config, sort_keys=True).encode())
        ]
        if len(accepted) == len(configs):
            self._announced[device_id] = accepted
