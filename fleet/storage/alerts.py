"""Alert records: open one per (rule, device) while it holds, resolve it when it stops; list them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from fleet.storage.records import FailedUpdate, Finding
from fleet.storage.schema import alerts, events
from fleet.storage.times import utc
from fleet.views import AlertView
from protocol.update_state import UpdateState


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


def list_alerts(conn: Connection, open_only: bool, limit: int = 200) -> list[AlertView]:
    query = select(alerts).order_by(alerts.c.id.desc()).limit(limit)
    if open_only:
        query = query.where(alerts.c.resolved_at.is_(None))
    return [_view(row) for row in conn.execute(query)]


def rollbacks_since(conn: Connection, since: datetime) -> list[FailedUpdate]:
    """Agent rollbacks received since ``since``, oldest first."""
    rows = conn.execute(
        select(events.c.device_id, events.c.state, events.c.reason, events.c.target_version)
        .where(events.c.state == UpdateState.ROLLBACK.value, events.c.received_at >= since)
        .order_by(events.c.id)
    ).all()
    return [FailedUpdate(row.device_id, row.state, row.reason, row.target_version) for row in rows]


def open_and_resolve(
    conn: Connection, wanted: dict[tuple[str, str], Finding], now: datetime
) -> tuple[list[AlertView], list[AlertView]]:
    """Open an alert for each finding not open yet, resolve each open one no longer found."""
    current = {
        (row.rule, row.device_id): row
        for row in conn.execute(select(alerts).where(alerts.c.resolved_at.is_(None)))
    }
    opened: list[AlertView] = []
    resolved: list[AlertView] = []
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
    return opened, resolved
