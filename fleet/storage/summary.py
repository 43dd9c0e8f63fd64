"""The fleet at a glance: devices by presence and model, open alerts, active rollouts; and the few
columns each device's retained health document is made of, read a page at a time."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import Connection, Row, case, func, select

from fleet.rollout_spec import ACTIVE_STATES
from fleet.storage.devices import list_devices
from fleet.storage.metrics import METRICS
from fleet.storage.schema import FLEET_DEFAULT, alerts, desired, device_latest, devices, rollouts
from fleet.views import DeviceView, FleetSummary

HEALTH_METRICS = tuple(metric.name for metric in METRICS if metric.health)
"""The metrics a health document carries, in the order of ``health_rows``' last columns."""


def summarize(conn: Connection) -> tuple[FleetSummary, list[DeviceView]]:
    devices_ = list_devices(conn)
    models = Counter(f"{d.model.name} {d.model.version}" if d.model else "none" for d in devices_)
    online = sum(1 for d in devices_ if d.presence == "online")
    return _summary(conn, len(devices_), online, models), devices_


def fleet_summary(conn: Connection) -> FleetSummary:
    """The same document as ``summarize``'s, counted by the database: no device is read into Python."""
    total, online = conn.execute(
        select(func.count(), func.coalesce(func.sum(case((devices.c.presence == "online", 1), else_=0)), 0))
    ).one()
    models: Counter[str] = Counter()
    grouped = select(devices.c.model_name, devices.c.model_version, func.count()).group_by(
        devices.c.model_name, devices.c.model_version
    )
    for name, version, n in conn.execute(grouped):
        models["none" if name is None or version is None else f"{name} {version}"] += n
    return _summary(conn, int(total), int(online), models)


def _summary(conn: Connection, total: int, online: int, models: Counter[str]) -> FleetSummary:
    open_alerts = conn.execute(
        select(func.count()).select_from(alerts).where(alerts.c.resolved_at.is_(None))
    ).scalar_one()
    active = conn.execute(
        select(func.count())
        .select_from(rollouts)
        .where(rollouts.c.state.in_([s.value for s in ACTIVE_STATES]))
    ).scalar_one()
    return FleetSummary(
        devices=total,
        online=online,
        offline=total - online,
        models=dict(sorted(models.items())),
        open_alerts=open_alerts,
        active_rollouts=active,
    )


def health_rows(conn: Connection, after: str | None, limit: int) -> list[Row[Any]]:
    """Up to ``limit`` devices by id after ``after``: device_id, presence, last_seen, model name and
    version, desired name and version, update_state, window_end, requests, errors, then
    ``HEALTH_METRICS``. Plain rows: the caller compares them to the last round's before building
    anything, so an unchanged device costs one tuple comparison."""
    own = desired.alias("own")
    fleet = desired.alias("fleet")
    query = (
        select(
            devices.c.device_id,
            devices.c.presence,
            devices.c.last_seen,
            devices.c.model_name,
            devices.c.model_version,
            func.coalesce(own.c.model_name, fleet.c.model_name),
            func.coalesce(own.c.model_version, fleet.c.model_version),
            devices.c.update_state,
            device_latest.c.window_end,
            device_latest.c.requests,
            device_latest.c.errors,
            *(device_latest.c[name] for name in HEALTH_METRICS),
        )
        .select_from(devices)
        .outerjoin(device_latest, device_latest.c.device_id == devices.c.device_id)
        .outerjoin(own, own.c.target == devices.c.device_id)
        .outerjoin(fleet, fleet.c.target == FLEET_DEFAULT)
        .order_by(devices.c.device_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(devices.c.device_id > after)
    return list(conn.execute(query))
