"""Alert records (open, resolve, history), what the alert engine reads (device states, telemetry
windows after a cursor) and the webhook deliveries it records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from fleet.storage.records import FailedUpdate, Finding
from fleet.storage.schema import alert_deliveries, alerts, devices, events, telemetry
from fleet.storage.times import utc
from fleet.views import AlertView
from protocol.update_state import UpdateState


class AlertState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    ALL = "all"


@dataclass(frozen=True)
class DeviceCondition:
    device_id: str
    presence: str
    last_seen: datetime
    update_state: str | None


@dataclass(frozen=True)
class WindowObs:
    """The columns of one stored telemetry window that alert rules judge."""

    id: int
    device_id: str
    received_at: datetime
    requests: int
    errors: int
    latency_p95: float | None
    drift_psi: float | None
    out_of_range_share: float | None
    input_drift: float | None = None
    stuck_features: int | None = None
    output_drift: float | None = None
    low_confidence_share: float | None = None


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


def list_alerts(
    conn: Connection, state: AlertState = AlertState.ALL, limit: int = 200, before_id: int | None = None
) -> list[AlertView]:
    """Newest first (by id); closed ones are the history."""
    query = select(alerts).order_by(alerts.c.id.desc()).limit(limit)
    if state is AlertState.OPEN:
        query = query.where(alerts.c.resolved_at.is_(None))
    elif state is AlertState.CLOSED:
        query = query.where(alerts.c.resolved_at.is_not(None))
    if before_id is not None:
        query = query.where(alerts.c.id < before_id)
    return [_view(row) for row in conn.execute(query)]


def open_alerts(conn: Connection) -> dict[tuple[str, str | None], AlertView]:
    rows = conn.execute(select(alerts).where(alerts.c.resolved_at.is_(None)))
    return {(row.rule, row.device_id): _view(row) for row in rows}


def open_alert_ids(conn: Connection) -> dict[tuple[str, str | None], int]:
    """(rule, device) -> id of each open alert: all an alert round needs (no view per alert)."""
    query = select(alerts.c.rule, alerts.c.device_id, alerts.c.id).where(alerts.c.resolved_at.is_(None))
    return {(rule, device_id): alert_id for rule, device_id, alert_id in conn.execute(query)}


def open_alert(conn: Connection, finding: Finding, at: datetime) -> AlertView:
    new_id = conn.execute(
        insert(alerts)
        .values(
            rule=finding.rule,
            device_id=finding.device_id,
            severity=finding.severity,
            message=finding.message,
            value=finding.value,
            opened_at=at,
        )
        .returning(alerts.c.id)
    ).scalar_one()
    return _view(conn.execute(select(alerts).where(alerts.c.id == new_id)).one())


def open_many(conn: Connection, opening: list[tuple[Finding, datetime]]) -> list[AlertView]:
    """``open_alert`` for many at once: one multi-row INSERT ... RETURNING, no read back (a first
    round on a big silent fleet opens thousands)."""
    if not opening:
        return []
    rows = [
        {
            "rule": finding.rule,
            "device_id": finding.device_id,
            "severity": finding.severity,
            "message": finding.message,
            "value": finding.value,
            "opened_at": at,
        }
        for finding, at in opening
    ]
    statement = insert(alerts).returning(alerts.c.id, sort_by_parameter_order=True)
    ids = conn.execute(statement, rows).scalars().all()
    return [
        AlertView(
            id=alert_id,
            rule=finding.rule,
            device_id=finding.device_id,
            severity=finding.severity,
            message=finding.message,
            value=finding.value,
            opened_at=utc(at),
            resolved_at=None,
        )
        for alert_id, (finding, at) in zip(ids, opening, strict=True)
    ]


def resolve_alert(conn: Connection, alert_id: int, at: datetime) -> AlertView:
    conn.execute(update(alerts).where(alerts.c.id == alert_id).values(resolved_at=at))
    return _view(conn.execute(select(alerts).where(alerts.c.id == alert_id)).one())


def rollbacks_since(conn: Connection, since: datetime) -> list[FailedUpdate]:
    """Agent rollbacks received since ``since``, oldest first."""
    rows = conn.execute(
        select(events.c.device_id, events.c.state, events.c.reason, events.c.target_version)
        .where(events.c.state == UpdateState.ROLLBACK.value, events.c.received_at >= since)
        .order_by(events.c.id)
    ).all()
    return [FailedUpdate(row.device_id, row.state, row.reason, row.target_version) for row in rows]


def device_states(conn: Connection) -> list[DeviceCondition]:
    rows = conn.execute(
        select(devices.c.device_id, devices.c.presence, devices.c.last_seen, devices.c.update_state)
    )
    return [DeviceCondition(r.device_id, r.presence, utc(r.last_seen), r.update_state) for r in rows]


_WINDOW_COLUMNS = (
    telemetry.c.id,
    telemetry.c.device_id,
    telemetry.c.received_at,
    telemetry.c.requests,
    telemetry.c.errors,
    telemetry.c.latency_p95,
    telemetry.c.drift_psi,
    telemetry.c.out_of_range_share,
    telemetry.c.input_drift,
    telemetry.c.stuck_features,
    telemetry.c.output_drift,
    telemetry.c.low_confidence_share,
)


def _obs(row: Any) -> WindowObs:
    return WindowObs(
        row.id,
        row.device_id,
        utc(row.received_at),
        row.requests,
        row.errors,
        row.latency_p95,
        row.drift_psi,
        row.out_of_range_share,
        row.input_drift,
        row.stuck_features,
        row.output_drift,
        row.low_confidence_share,
    )


def latest_windows(conn: Connection) -> list[WindowObs]:
    """The newest window of each device (one index lookup per device), oldest first."""
    latest = (
        select(func.max(telemetry.c.id))
        .where(telemetry.c.device_id == devices.c.device_id)
        .correlate(devices)
        .scalar_subquery()
    )
    query = select(*_WINDOW_COLUMNS).select_from(devices).join(telemetry, telemetry.c.id == latest)
    return sorted((_obs(row) for row in conn.execute(query)), key=lambda w: w.id)


def windows_after(conn: Connection, after_id: int, limit: int) -> list[WindowObs]:
    """Windows stored after ``after_id``, oldest first: a range scan of the primary key."""
    query = select(*_WINDOW_COLUMNS).where(telemetry.c.id > after_id).order_by(telemetry.c.id).limit(limit)
    return [_obs(row) for row in conn.execute(query)]


def newest_window_id(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(telemetry.c.id), 0))).scalar_one())


def record_delivery(  # noqa: PLR0913 - one keyword per column
    conn: Connection,
    *,
    alert_id: int,
    event: str,
    url: str,
    attempts: int,
    delivered: bool,
    status: int | None,
    error: str | None,
    at: datetime,
) -> None:
    conn.execute(
        insert(alert_deliveries).values(
            alert_id=alert_id,
            event=event,
            url=url,
            attempts=attempts,
            delivered=delivered,
            status=status,
            error=error,
            finished_at=at,
        )
    )


def list_deliveries(conn: Connection, alert_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(alert_deliveries).order_by(alert_deliveries.c.id.desc()).limit(limit)
    if alert_id is not None:
        query = query.where(alert_deliveries.c.alert_id == alert_id)
    return [dict(row._mapping) for row in conn.execute(query)]
