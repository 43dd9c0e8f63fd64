"""Rollout queries: targets, wave membership, assignments and the telemetry a wave is judged on."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, Select, and_, func, insert, or_, select, update

from fleet.rollout_spec import (
    ACTIVE_STATES,
    GateResult,
    Gates,
    RolloutRequest,
    RolloutState,
    RolloutView,
    Target,
)
from fleet.storage.compat import skipped_devices
from fleet.storage.device_tags import device_tags
from fleet.storage.records import WindowFigures
from fleet.storage.rollout_devices import state_counts
from fleet.storage.schema import desired, device_meta, devices, rollout_devices, rollouts, telemetry
from fleet.storage.times import utc

BASELINE_SPAN = timedelta(hours=2)
"""How far before the rollout (by receive time) the previous model's latency is taken from."""


def resolve_target(conn: Connection, target: Target) -> list[tuple[str, str]]:
    """(device id, presence) of every known device the target selects, sorted by id; revoked devices
    are left out (they can download nothing). One query: a group is an equality on ``device_meta``,
    tags the devices that carry every one of them in ``device_tags`` (its tag index), so a tagged
    rollout in a big fleet reads the tagged devices, not every device."""
    query = select(devices.c.device_id, devices.c.presence)
    query = query.select_from(devices).outerjoin(device_meta, device_meta.c.device_id == devices.c.device_id)
    query = query.where(device_meta.c.revoked_at.is_(None))
    if target.devices:
        query = query.where(devices.c.device_id.in_(target.devices))
    elif target.group is not None:
        query = query.where(device_meta.c.group_name == target.group)
    elif target.tags:
        query = query.where(devices.c.device_id.in_(devices_with_every_tag(set(target.tags))))
    return [(row.device_id, row.presence) for row in conn.execute(query.order_by(devices.c.device_id))]


def devices_with_every_tag(tags: set[str]) -> Select[tuple[str]]:
    """Ids of the devices that carry every one of ``tags``: (device, tag) is the table's key, so a
    device has all of them when it has as many of them as there are."""
    return (
        select(device_tags.c.device_id)
        .where(device_tags.c.tag.in_(sorted(tags)))
        .group_by(device_tags.c.device_id)
        .having(func.count() == len(tags))
    )


def busy_devices(conn: Connection, device_ids: list[str]) -> dict[str, int]:
    """Devices among ``device_ids`` already in a running or paused rollout, with its id."""
    query = (
        select(rollout_devices.c.device_id, rollouts.c.id)
        .join(rollouts, rollouts.c.id == rollout_devices.c.rollout_id)
        .where(rollouts.c.state.in_([s.value for s in ACTIVE_STATES]))
        .where(rollout_devices.c.device_id.in_(device_ids))
    )
    return {row.device_id: row.id for row in conn.execute(query)}


def canary_order(key: str, chosen: list[tuple[str, str]]) -> list[str]:
    """Online devices first, then a stable pseudo-random order (so wave 1 is not always the same device)."""

    def rank(item: tuple[str, str]) -> tuple[bool, str]:
        device_id, presence = item
        return presence != "online", hashlib.sha256(f"{key}/{device_id}".encode()).hexdigest()

    return [device_id for device_id, _ in sorted(chosen, key=rank)]


def create_rollout(
    conn: Connection,
    request: RolloutRequest,
    *,
    ordered: list[str],
    sizes: list[int],
    now: datetime,
    created_by: str | None,
) -> int:
    rollout_id = conn.execute(
        insert(rollouts)
        .values(
            model_name=request.name,
            model_version=request.version,
            target=request.target.model_dump(mode="json"),
            waves=sizes,
            gates=request.gates.model_dump(mode="json"),
            state=RolloutState.RUNNING.value,
            wave=0,
            wave_started_at=None,
            created_at=now,
            updated_at=now,
            created_by=created_by,
            deadline_at=now + timedelta(seconds=request.deadline_s),
        )
        .returning(rollouts.c.id)
    ).scalar_one()
    own = {row.target: row for row in conn.execute(select(desired).where(desired.c.target.in_(ordered)))}
    rows = []
    for index, device_id in enumerate(ordered):
        wave = next(w for w, size in enumerate(sizes) if index < size)
        previous = own.get(device_id)
        rows.append(
            {
                "rollout_id": rollout_id,
                "device_id": device_id,
                "wave": wave,
                "had_own": previous is not None,
                "previous_name": previous.model_name if previous is not None else None,
                "previous_version": previous.model_version if previous is not None else None,
                "assigned_at": None,
            }
        )
    if rows:
        conn.execute(insert(rollout_devices), rows)
    return int(rollout_id)


def get_row(conn: Connection, rollout_id: int) -> Row[Any] | None:
    return conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()


def lock_row(conn: Connection, rollout_id: int) -> Row[Any] | None:
    """The rollout, locked for the rest of the transaction: an UPDATE that changes nothing takes the
    row lock on PostgreSQL and the write lock on SQLite *before* the read (a SQLite read first and a
    write later would fail when another writer committed in between), so two workers' read-decide-
    write sequences on one rollout run one after the other."""
    conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(updated_at=rollouts.c.updated_at))
    return get_row(conn, rollout_id)


def active_ids(conn: Connection) -> list[int]:
    query = (
        select(rollouts.c.id).where(rollouts.c.state == RolloutState.RUNNING.value).order_by(rollouts.c.id)
    )
    return [int(i) for i in conn.execute(query).scalars()]


def set_fields(conn: Connection, rollout_id: int, now: datetime, **values: Any) -> None:
    conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(updated_at=now, **values))


def wave_windows(
    conn: Connection, row: Row[Any], device_ids: list[str]
) -> tuple[dict[str, list[WindowFigures]], list[float]]:
    """Windows on the rollout's model per device, and the same devices' previous-model p95s.

    Both are chosen by the fleet's receive time, not the device's window times: a board whose clock
    is wrong is judged like any other (its windows arrive when they arrive).
    """
    started = utc(row.created_at)
    on_model = and_(telemetry.c.model_name == row.model_name, telemetry.c.model_version == row.model_version)
    per_device: dict[str, list[WindowFigures]] = {device_id: [] for device_id in device_ids}
    if not device_ids:
        return per_device, []
    windows = conn.execute(
        select(
            telemetry.c.device_id,
            telemetry.c.requests,
            telemetry.c.errors,
            telemetry.c.latency_p95,
            telemetry.c.drift_psi,
            telemetry.c.low_confidence_share,
            telemetry.c.out_of_range_share,
            telemetry.c.input_drift,
            telemetry.c.output_drift,
            telemetry.c.stuck_features,
        ).where(telemetry.c.device_id.in_(device_ids), on_model, telemetry.c.received_at >= started)
    ).all()
    for w in windows:
        per_device[w.device_id].append(
            WindowFigures(
                requests=int(w.requests),
                errors=int(w.errors),
                latency_p95=w.latency_p95,
                drift_psi=w.drift_psi,
                low_confidence_share=w.low_confidence_share,
                out_of_range_share=w.out_of_range_share,
                input_drift=w.input_drift,
                output_drift=w.output_drift,
                stuck_features=w.stuck_features,
            )
        )
    baseline = (
        conn.execute(
            select(telemetry.c.latency_p95).where(
                telemetry.c.device_id.in_(device_ids),
                telemetry.c.received_at <= started,
                telemetry.c.received_at > started - BASELINE_SPAN,
                telemetry.c.latency_p95.is_not(None),
                or_(
                    telemetry.c.model_name.is_(None),
                    telemetry.c.model_name != row.model_name,
                    telemetry.c.model_version != row.model_version,
                ),
            )
        )
        .scalars()
        .all()
    )
    return per_device, [float(v) for v in baseline]


def view(conn: Connection, row: Row[Any]) -> RolloutView:
    counts = conn.execute(
        select(
            func.count().label("total"),
            func.count(rollout_devices.c.assigned_at).label("assigned"),
            func.count(devices.c.device_id).label("on_target"),
        )
        .select_from(rollout_devices)
        .outerjoin(
            devices,
            and_(
                devices.c.device_id == rollout_devices.c.device_id,
                devices.c.model_name == row.model_name,
                devices.c.model_version == row.model_version,
            ),
        )
        .where(rollout_devices.c.rollout_id == row.id)
    ).one()
    return RolloutView(
        id=row.id,
        name=row.model_name,
        version=row.model_version,
        target=Target.model_validate(row.target),
        waves=list(row.waves),
        gates=Gates.model_validate(row.gates),
        state=RolloutState(row.state),
        wave=row.wave,
        wave_started_at=utc(row.wave_started_at) if row.wave_started_at else None,
        reason=row.reason,
        last_gates=[GateResult.model_validate(g) for g in row.last_gates] if row.last_gates else None,
        devices_total=counts.total,
        devices_assigned=counts.assigned,
        devices_on_target=counts.on_target,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        created_by=row.created_by,
        skipped=skipped_devices(conn, row.id),
        deadline_at=utc(row.deadline_at) if row.deadline_at is not None else None,
        device_states=state_counts(conn, row.id),
    )


def list_views(conn: Connection, limit: int = 100) -> list[RolloutView]:
    rows = conn.execute(select(rollouts).order_by(rollouts.c.id.desc()).limit(limit)).all()
    return [view(conn, row) for row in rows]
