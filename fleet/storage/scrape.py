"""What a Prometheus scrape reads, each query bounded: the devices (one row each), each device's newest
window (one index lookup per device), the windows stored after a cursor (a primary-key range scan,
capped), and two counts. Nothing here scans the telemetry table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from fleet.rollout_spec import ACTIVE_STATES
from fleet.storage.schema import alerts, devices, rollouts, telemetry
from fleet.storage.times import utc


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    presence: str
    last_seen: datetime
    model_name: str | None
    model_version: str | None


@dataclass(frozen=True)
class WindowRow:
    id: int
    device_id: str
    window_end: datetime
    model_name: str | None
    model_version: str | None
    requests: int
    errors: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    drift_psi: float | None


_WINDOW = (
    telemetry.c.id,
    telemetry.c.device_id,
    telemetry.c.window_end,
    telemetry.c.model_name,
    telemetry.c.model_version,
    telemetry.c.requests,
    telemetry.c.errors,
    telemetry.c.latency_p50,
    telemetry.c.latency_p95,
    telemetry.c.latency_p99,
    telemetry.c.drift_psi,
)


def _window(row: Any) -> WindowRow:
    return WindowRow(
        row.id,
        row.device_id,
        utc(row.window_end),
        row.model_name,
        row.model_version,
        row.requests,
        row.errors,
        row.latency_p50,
        row.latency_p95,
        row.latency_p99,
        row.drift_psi,
    )


def all_devices(conn: Connection) -> list[DeviceRow]:
    query = select(
        devices.c.device_id,
        devices.c.presence,
        devices.c.last_seen,
        devices.c.model_name,
        devices.c.model_version,
    ).order_by(devices.c.last_seen.desc(), devices.c.device_id)
    return [
        DeviceRow(r.device_id, r.presence, utc(r.last_seen), r.model_name, r.model_version)
        for r in conn.execute(query)
    ]


def newest_windows(conn: Connection) -> list[WindowRow]:
    latest = (
        select(func.max(telemetry.c.id))
        .where(telemetry.c.device_id == devices.c.device_id)
        .correlate(devices)
        .scalar_subquery()
    )
    query = select(*_WINDOW).select_from(devices).join(telemetry, telemetry.c.id == latest)
    return [_window(row) for row in conn.execute(query)]


def windows_after(conn: Connection, after_id: int, limit: int) -> list[WindowRow]:
    query = select(*_WINDOW).where(telemetry.c.id > after_id).order_by(telemetry.c.id).limit(limit)
    return [_window(row) for row in conn.execute(query)]


def newest_window_id(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(telemetry.c.id), 0))).scalar_one())


def open_alert_count(conn: Connection) -> int:
    query = select(func.count()).select_from(alerts).where(alerts.c.resolved_at.is_(None))
    return int(conn.execute(query).scalar_one())


def active_rollout_count(conn: Connection) -> int:
    states = [s.value for s in ACTIVE_STATES]
    query = select(func.count()).select_from(rollouts).where(rollouts.c.state.in_(states))
    return int(conn.execute(query).scalar_one())
