"""Per-device rollout state: who was assigned when, what each device serves, commits and reported
failing, and the stored state the controller derives from that (``fleet.rollouts.devices``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, select, update

from fleet.rollout_spec import DeviceRolloutState, RolloutDeviceView
from fleet.storage.compat import skipped_devices
from fleet.storage.desired import clear_desired, set_desired
from fleet.storage.schema import devices, events, rollout_devices
from fleet.storage.times import utc
from protocol.update_state import FAILED_INSTALL_STATES

ONLINE = "online"

Change = tuple[str, DeviceRolloutState, str | None]
"""(device id, new state, why)."""


@dataclass(frozen=True)
class DeviceFacts:
    """What the fleet knows of one assigned device of a rollout, at one tick."""

    device_id: str
    wave: int
    state: DeviceRolloutState
    state_at: datetime
    detail: str | None
    presence: str | None
    """The stored presence (None: the device never reported)."""
    last_seen: datetime | None
    serving: tuple[str | None, str | None]
    committed: tuple[str | None, str | None]
    update_state: str | None
    failure: str | None
    """The newest failed install of the target reported since the device was assigned."""

    @property
    def online(self) -> bool:
        return self.presence == ONLINE


def assign_through(conn: Connection, row: Row[Any], wave: int, now: datetime) -> list[str]:
    """Point every not yet assigned device of waves ``<= wave`` at the rollout's model; the online
    ones become installing (returned: to be told), the others stay pending until they return."""
    query = (
        select(rollout_devices.c.device_id, devices.c.presence)
        .select_from(rollout_devices)
        .outerjoin(devices, devices.c.device_id == rollout_devices.c.device_id)
        .where(
            rollout_devices.c.rollout_id == row.id,
            rollout_devices.c.wave <= wave,
            rollout_devices.c.assigned_at.is_(None),
        )
    )
    found = conn.execute(query).all()
    for item in found:
        set_desired(conn, item.device_id, row.model_name, row.model_version)
    online = [item.device_id for item in found if item.presence == ONLINE]
    states = [
        (item.device_id, DeviceRolloutState.INSTALLING, "told to install")
        if item.presence == ONLINE
        else (item.device_id, DeviceRolloutState.PENDING, "offline when its wave started")
        for item in found
    ]
    if found:
        conn.execute(
            update(rollout_devices)
            .where(
                rollout_devices.c.rollout_id == row.id,
                rollout_devices.c.device_id.in_([item.device_id for item in found]),
            )
            .values(assigned_at=now)
        )
        set_states(conn, row.id, states, now)
    return online


def set_states(conn: Connection, rollout_id: int, changes: Sequence[Change], now: datetime) -> None:
    if not changes:
        return
    conn.execute(
        update(rollout_devices)
        .where(rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.device_id == bindparam("d"))
        .values(state=bindparam("s"), state_at=now, detail=bindparam("why")),
        [{"d": device_id, "s": state.value, "why": detail} for device_id, state, detail in changes],
    )


def member_facts(conn: Connection, row: Row[Any]) -> list[DeviceFacts]:
    """Every assigned device of the rollout, with what it serves, committed and reported failing."""
    rows = conn.execute(
        select(
            rollout_devices.c.device_id,
            rollout_devices.c.wave,
            rollout_devices.c.state,
            rollout_devices.c.state_at,
            rollout_devices.c.detail,
            rollout_devices.c.assigned_at,
            devices.c.presence,
            devices.c.last_seen,
            devices.c.model_name,
            devices.c.model_version,
            devices.c.committed_name,
            devices.c.committed_version,
            devices.c.update_state,
        )
        .select_from(rollout_devices)
        .outerjoin(devices, devices.c.device_id == rollout_devices.c.device_id)
        .where(rollout_devices.c.rollout_id == row.id, rollout_devices.c.assigned_at.is_not(None))
        .order_by(rollout_devices.c.device_id)
    ).all()
    failures = _failures(conn, row, {r.device_id: utc(r.assigned_at) for r in rows})
    return [
        DeviceFacts(
            device_id=r.device_id,
            wave=r.wave,
            state=DeviceRolloutState(r.state),
            state_at=utc(r.state_at or r.assigned_at),
            detail=r.detail,
            presence=r.presence,
            last_seen=utc(r.last_seen) if r.last_seen is not None else None,
            serving=(r.model_name, r.model_version),
            committed=(r.committed_name, r.committed_version),
            update_state=r.update_state,
            failure=failures.get(r.device_id),
        )
        for r in rows
    ]


def _failures(conn: Connection, row: Row[Any], assigned: dict[str, datetime]) -> dict[str, str]:
    """The newest failed install of the rollout's model per device, received after its assignment
    (the fleet's receive time: a device clock that is wrong does not hide it)."""
    if not assigned:
        return {}
    found = conn.execute(
        select(events.c.device_id, events.c.state, events.c.reason, events.c.received_at)
        .where(
            events.c.device_id.in_(list(assigned)),
            events.c.target_name == row.model_name,
            events.c.target_version == row.model_version,
            events.c.state.in_(sorted(FAILED_INSTALL_STATES)),
            events.c.ok.is_(False),
            events.c.received_at >= utc(row.created_at),
        )
        .order_by(events.c.id)
    ).all()
    out: dict[str, str] = {}
    for event in found:
        if utc(event.received_at) >= assigned[event.device_id]:
            out[event.device_id] = f"{event.state}: {event.reason or 'no reason given'}"
    return out


def restore_devices(conn: Connection, rollout_id: int, device_ids: list[str] | None = None) -> list[str]:
    """Give assigned devices (all, or ``device_ids``) back the assignment they had before the rollout."""
    query = select(rollout_devices).where(
        rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.assigned_at.is_not(None)
    )
    if device_ids is not None:
        query = query.where(rollout_devices.c.device_id.in_(device_ids))
    rows = conn.execute(query).all()
    for item in rows:
        if item.had_own:
            set_desired(conn, item.device_id, item.previous_name, item.previous_version)
        else:
            clear_desired(conn, item.device_id)
    return [item.device_id for item in rows]


def state_counts(conn: Connection, rollout_id: int) -> dict[DeviceRolloutState, int]:
    rows = conn.execute(
        select(rollout_devices.c.state, func.count())
        .where(rollout_devices.c.rollout_id == rollout_id)
        .group_by(rollout_devices.c.state)
    ).all()
    counts = {DeviceRolloutState(state): int(count) for state, count in rows}
    incompatible = len(skipped_devices(conn, rollout_id))
    if incompatible:
        counts[DeviceRolloutState.SKIPPED_INCOMPATIBLE] = incompatible
    return counts


def device_views(conn: Connection, rollout_id: int) -> list[RolloutDeviceView]:
    """Every targeted device with its state; the runtime-incompatible ones as skipped-incompatible."""
    rows = conn.execute(select(rollout_devices).where(rollout_devices.c.rollout_id == rollout_id)).all()
    views = [
        RolloutDeviceView(
            device_id=r.device_id,
            wave=r.wave,
            state=DeviceRolloutState(r.state),
            since=utc(r.state_at) if r.state_at is not None else None,
            detail=r.detail,
        )
        for r in rows
    ]
    views += [
        RolloutDeviceView(
            device_id=note.device_id,
            wave=None,
            state=DeviceRolloutState.SKIPPED_INCOMPATIBLE,
            since=None,
            detail=note.reason,
        )
        for note in skipped_devices(conn, rollout_id)
    ]
    return sorted(views, key=lambda v: v.device_id)
