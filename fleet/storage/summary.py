"""The fleet at a glance: devices by presence and model, open alerts, active rollouts."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import Connection, func, select

from fleet.rollout_spec import ACTIVE_STATES
from fleet.storage.devices import list_devices
from fleet.storage.schema import alerts, rollouts
from fleet.views import DeviceView, FleetSummary


def summarize(conn: Connection) -> tuple[FleetSummary, list[DeviceView]]:
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
