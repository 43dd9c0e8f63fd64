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
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, insert, select, update

from fleet.deploy import Publisher
from fleet.errors import FleetError
from fleet.storage.repository import list_devices, utc
from fleet.storage.schema import alerts, events
from protocol.topics import Topics

log = logging.getLogger(__name__)


class AlertRules(BaseModel):
    """Thresholds; ``null`` turns a rule off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offline_minutes: float | None = Field(10, gt=0, description="device offline (or silent) longer than this")
    latency_p95_ms: float | None = Field(None, gt=0, description="latest window's p95 latency above this")
    drift_psi: float | None = Field(0.25, ge=0, description="latest window's drift PSI above this")
    error_rate: float | None = Field(0.05, ge=0, le=1, description="latest window's failed share above this")
    rollback: bool = Field(True, description="an agent rolled a model back")
    rollback_hold_minutes: float = Field(60, gt=0, description="how long a rollback alert stays open")
    webhook_url: str | None = Field(None, description="POST each opened/resolved alert here as JSON")
    webhook_timeout_s: float = Field(5, gt=0)


class AlertView(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    rule: str
    device_id: str | None
    severity: str
    message: str
    value: float | None
    opened_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True)
class Finding:
    rule: str
    device_id: str
    severity: str
    message: str
    value: float | None


def alerts_topic(topics: Topics) -> str:
    """Retained: every open alert, as JSON."""
    return f"{topics.prefix}/fleet/alerts"


def load_rules(path: Path) -> AlertRules:
    """Alert rules from a TOML file (the AlertRules fields at top level)."""
    try:
        data = tomllib.loads(path.read_text())
        return AlertRules.model_validate(data)
    except OSError as exc:
        raise FleetError(f"cannot read alert rules {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise FleetError(f"alert rules {path}: {exc}") from exc


def _view(row: Any) -> AlertView:
    return AlertView(
        id=row.id,
        rule=row.rule,
        device_id=row.device_id,
        severity=row.severity,
        message=row.message,
        value=row.value,
        opened_at=utc(row.opened_at),
        resolved_at=utc(row.resolved_at) if row.resolved_at else None,
    )


def list_alerts(engine: Engine, open_only: bool, limit: int = 200) -> list[AlertView]:
    query = select(alerts).order_by(alerts.c.id.desc()).limit(limit)
    if open_only:
        query = query.where(alerts.c.resolved_at.is_(None))
    with engine.begin() as conn:
        return [_view(row) for row in conn.execute(query)]


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
        found: list[Finding] = []
        with self.engine.begin() as conn:
            devices = list_devices(conn)
            recent_rollbacks = (
                conn.execute(
                    select(events.c.device_id, events.c.reason, events.c.target_version).where(
                        events.c.state == "rollback",
                        events.c.received_at >= now - timedelta(minutes=rules.rollback_hold_minutes),
                    )
                ).all()
                if rules.rollback
                else []
            )
        for device in devices:
            silent = (now - device.last_seen).total_seconds() / 60
            # Silent: no status, telemetry or event for that long (an offline will counts as the last word).
            if rules.offline_minutes is not None and silent > rules.offline_minutes:
                state = "offline" if device.presence != "online" else "silent"
                message = f"{device.device_id} {state} for {silent:.0f} min"
                found.append(Finding("offline", device.device_id, "warning", message, silent))
            window = device.telemetry
            if window is None:
                continue
            if rules.latency_p95_ms is not None and (window.latency_p95 or 0) > rules.latency_p95_ms:
                found.append(
                    Finding(
                        "latency_p95",
                        device.device_id,
                        "warning",
                        f"{device.device_id} p95 latency {window.latency_p95:.1f} ms"
                        f" > {rules.latency_p95_ms} ms",
                        window.latency_p95,
                    )
                )
            rate = window.errors / window.requests if window.requests else 0.0
            if rules.error_rate is not None and rate > rules.error_rate:
                found.append(
                    Finding(
                        "error_rate",
                        device.device_id,
                        "critical",
                        f"{device.device_id} error rate {rate:.1%} > {rules.error_rate:.1%}",
                        rate,
                    )
                )
            if (
                rules.drift_psi is not None
                and window.drift_psi is not None
                and window.drift_psi > rules.drift_psi
            ):
                found.append(
                    Finding(
                        "drift_psi",
                        device.device_id,
                        "warning",
                        f"{device.device_id} drift PSI {window.drift_psi:.2f} > {rules.drift_psi}",
                        window.drift_psi,
                    )
                )
        for row in recent_rollbacks:
            found.append(
                Finding(
                    "rollback",
                    row.device_id,
                    "critical",
                    f"{row.device_id} rolled back {row.target_version}: {row.reason or 'no reason given'}",
                    None,
                )
            )
        return found

    def evaluate(self) -> tuple[list[AlertView], list[AlertView]]:
        """Open and resolve alerts; returns (opened, resolved). Publishes and posts the changes."""
        now = self.clock()
        wanted = {(f.rule, f.device_id): f for f in self.findings(now)}
        opened: list[AlertView] = []
        resolved: list[AlertView] = []
        with self.engine.begin() as conn:
            current = {
                (row.rule, row.device_id): row
                for row in conn.execute(select(alerts).where(alerts.c.resolved_at.is_(None)))
            }
            for key, finding in wanted.items():
                if key in current:
                    continue
                new_id = conn.execute(
                    insert(alerts)
                    .values(
                        rule=finding.rule,
                        device_id=finding.device_id,
                        severity=finding.severity,
                        message=finding.message,
                        value=finding.value,
                        opened_at=now,
                    )
                    .returning(alerts.c.id)
                ).scalar_one()
                opened.append(_view(conn.execute(select(alerts).where(alerts.c.id == new_id)).one()))
            for key, row in current.items():
                if key not in wanted:
                    conn.execute(update(alerts).where(alerts.c.id == row.id).values(resolved_at=now))
                    resolved.append(_view(conn.execute(select(alerts).where(alerts.c.id == row.id)).one()))
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
        if payload != self._published and self.publisher.publish(
            self.topic, payload.encode(), qos=1, retain=True
        ):
            self._published = payload


def _post_json(url: str, body: dict[str, Any], timeout_s: float) -> None:
    try:
        response = requests.post(url, json=body, timeout=timeout_s)
        if response.status_code >= 300:
            log.warning("alert webhook %s answered %d", url, response.status_code)
    except requests.RequestException as exc:
        log.warning("alert webhook %s failed: %s", url, exc)
