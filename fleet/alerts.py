"""Alert rules from config -> alert records, a retained MQTT topic and an optional webhook.

``AlertEngine.evaluate()`` is called from the fleet's maintenance loop with an injected clock; it
opens an alert when a rule starts to hold for a device and resolves it when it stops holding.
"""

from __future__ import annotations

import json
import logging
import threading
import tomllib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine

from fleet.deploy import Publisher, was_refused
from fleet.errors import FleetError
from fleet.storage import repository
from fleet.storage.records import Finding
from fleet.views import AlertView, DeviceView
from protocol.topics import Topics

log = logging.getLogger(__name__)


class AlertRules(BaseModel):
    """Thresholds; ``null`` turns a rule off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offline_minutes: float | None = Field(10, gt=0, description="device offline (or silent) longer than this")
    latency_p95_ms: float | None = Field(None, gt=0, description="latest window's p95 latency above this")
    drift_psi: float | None = Field(0.25, ge=0, description="latest window's drift PSI above this")
    out_of_range_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="latest window's share of inputs outside the baseline's range above this",
    )
    error_rate: float | None = Field(0.05, ge=0, le=1, description="latest window's failed share above this")
    rollback: bool = Field(True, description="an agent rolled a model back")
    rollback_hold_minutes: float = Field(60, gt=0, description="how long a rollback alert stays open")
    webhook_url: str | None = Field(None, description="POST each opened/resolved alert here as JSON")
    webhook_timeout_s: float = Field(5, gt=0)


def alerts_topic(topics: Topics) -> str:
    """Retained: every open alert, as JSON."""
    return topics.fleet_alerts


def load_rules(path: Path) -> AlertRules:
    """Alert rules from a TOML file (the AlertRules fields at top level)."""
    try:
        data = tomllib.loads(path.read_text())
        return AlertRules.model_validate(data)
    except OSError as exc:
        raise FleetError(f"cannot read alert rules {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise FleetError(f"alert rules {path}: {exc}") from exc


def list_alerts(engine: Engine, open_only: bool, limit: int = 200) -> list[AlertView]:
    with engine.begin() as conn:
        return repository.list_alerts(conn, open_only, limit)


def device_findings(rules: AlertRules, device: DeviceView, now: datetime) -> list[Finding]:
    """The rules that hold for one device now: silence, and thresholds on its newest window."""
    found: list[Finding] = []
    if device.last_seen is None:  # provisioned, never reported: nothing to judge yet
        return found
    silent = (now - device.last_seen).total_seconds() / 60
    # Silent: no status, telemetry or event for that long (an offline will counts as the last word).
    if rules.offline_minutes is not None and silent > rules.offline_minutes:
        state = "offline" if device.presence != "online" else "silent"
        message = f"{device.device_id} {state} for {silent:.0f} min"
        found.append(Finding("offline", device.device_id, "warning", message, silent))
    window = device.telemetry
    if window is None:
        return found
    p95 = window.value("latency_p95")
    if rules.latency_p95_ms is not None and p95 is not None and p95 > rules.latency_p95_ms:
        message = f"{device.device_id} p95 latency {p95:.1f} ms > {rules.latency_p95_ms} ms"
        found.append(Finding("latency_p95", device.device_id, "warning", message, p95))
    rate = window.errors / window.requests if window.requests else 0.0
    if rules.error_rate is not None and rate > rules.error_rate:
        message = f"{device.device_id} error rate {rate:.1%} > {rules.error_rate:.1%}"
        found.append(Finding("error_rate", device.device_id, "critical", message, rate))
    drift = window.value("drift_psi")
    if rules.drift_psi is not None and drift is not None and drift > rules.drift_psi:
        message = f"{device.device_id} drift PSI {drift:.2f} > {rules.drift_psi}"
        found.append(Finding("drift_psi", device.device_id, "warning", message, drift))
    outside = window.value("out_of_range_share")
    limit = rules.out_of_range_share
    if limit is not None and outside is not None and outside > limit:
        message = f"{device.device_id} inputs out of range {outside:.1%} > {limit:.1%}"
        found.append(Finding("out_of_range_share", device.device_id, "warning", message, outside))
    return found


class AlertEngine:
    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        topic: str,
        rules: AlertRules,
        *,
        clock: Callable[[], datetime],
        post: Callable[[str, dict[str, Any], float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.topic = topic
        self.rules = rules
        self.clock = clock
        self._post = post or _post_json
        self._published: str | None = None

    def findings(self, now: datetime) -> list[Finding]:
        rules = self.rules
        with self.engine.begin() as conn:
            devices = repository.list_devices(conn)
            since = now - timedelta(minutes=rules.rollback_hold_minutes)
            rollbacks = repository.rollbacks_since(conn, since) if rules.rollback else []
        found = [finding for device in devices for finding in device_findings(rules, device, now)]
        found += [
            Finding(
                "rollback",
                row.device_id,
                "critical",
                f"{row.device_id} rolled back {row.target_version}: {row.reason or 'no reason given'}",
                None,
            )
            for row in rollbacks
        ]
        return found

    def evaluate(self) -> tuple[list[AlertView], list[AlertView]]:
        """Open and resolve alerts; returns (opened, resolved). Publishes and posts the changes."""
        now = self.clock()
        wanted = {(f.rule, f.device_id): f for f in self.findings(now)}
        with self.engine.begin() as conn:
            opened, resolved = repository.open_and_resolve(conn, wanted, now)
        for alert in opened:
            log.warning("alert opened: %s", alert.message)
        self._publish()
        if self.rules.webhook_url:
            for state, batch in (("opened", opened), ("resolved", resolved)):
                for alert in batch:
                    body = {"state": state, "alert": alert.model_dump(mode="json")}
                    threading.Thread(
                        target=self._post,
                        args=(self.rules.webhook_url, body, self.rules.webhook_timeout_s),
                        daemon=True,
                    ).start()
        return opened, resolved

    def _publish(self) -> None:
        open_alerts = [a.model_dump(mode="json") for a in list_alerts(self.engine, open_only=True)]
        payload = json.dumps({"open": len(open_alerts), "alerts": open_alerts}, sort_keys=True)
        changed = payload != self._published or was_refused(self.publisher, self.topic)
        if changed and self.publisher.publish(self.topic, payload.encode(), qos=1, retain=True):
            self._published = payload


def _post_json(url: str, body: dict[str, Any], timeout_s: float) -> None:
    try:
        response = requests.post(url, json=body, timeout=timeout_s)
        if response.status_code >= 300:
            log.warning("alert webhook %s answered %d", url, response.status_code)
    except requests.RequestException as exc:
        log.warning("alert webhook %s failed: %s", url, exc)
