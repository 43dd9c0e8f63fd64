"""Rollout queries: targets, wave membership, assignments and the telemetry a wave is judged on."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, func, insert, or_, select, update

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
from fleet.storage.desired import clear_desired, set_desired
from fleet.storage.records import WaveHealth
from fleet.storage.schema import desired, device_meta, devices, events, rollout_devices, rollouts, telemetry
from fleet.storage.times import utc
from protocol.update_state import FAILED_INSTALL_STATES

BASELINE_SPAN = timedelta(hours=2)
"""How far before the rollout the previous model's latency is taken from."""


def resolve_target(conn: Connection, target: Target) -> list[tuple[str, str]]:
    """(device id, presence) of every known device the target selects, sorted by id; revoked devices
    are left out (they can download nothing)."""
    query = select(devices.c.device_id, devices.c.presence, device_meta.c.group_name, device_meta.c.tags)
    query = query.select_from(devices).outerjoin(device_meta, device_meta.c.device_id == devices.c.device_id)
    query = query.where(device_meta.c.revoked_at.is_(None))
    if target.devices:
        query = query.where(devices.c.device_id.in_(target.devices))
    elif target.group is not None:
        query = query.where(device_meta.c.group_name == target.group)
    rows = conn.execute(query.order_by(devices.c.device_id)).all()
    wanted = set(target.tags)
    return [(row.device_id, row.presence) for row in rows if not wanted or wanted <= set(row.tags or [])]


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


def active_ids(conn: Connection) -> list[int]:
    query = (
        select(rollouts.c.id).where(rollouts.c.state == RolloutState.RUNNING.value).order_by(rollouts.c.id)
    )
    return [int(i) for i in conn.execute(query).scalars()]


def set_fields(conn: Connection, rollout_id: int, now: datetime, **values: Any) -> None:
    conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(updated_at=now, **values))


def assign_through(conn: Connection, row: Row[Any], wave: int, now: datetime) -> list[str]:
    """Point every not yet assigned device of waves ``<= wave`` at the rollout's model."""
    pending = (
        conn.execute(
            select(rollout_devices.c.device_id).where(
                rollout_devices.c.rollout_id == row.id,
                rollout_devices.c.wave <= wave,
                rollout_devices.c.assigned_at.is_(None),
            )
        )
        .scalars()
        .all()
    )
    for device_id in pending:
        set_desired(conn, device_id, row.model_name, row.model_version)
    if pending:
        conn.execute(
            update(rollout_devices)
            .where(rollout_devices.c.rollout_id == row.id, rollout_devices.c.device_id.in_(pending))
            .values(assigned_at=now)
        )
    return list(pending)


def restore(conn: Connection, rollout_id: int) -> list[str]:
    """Give every assigned device back the assignment it had before the rollout."""
    rows = conn.execute(
        select(rollout_devices).where(
            rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.assigned_at.is_not(None)
        )
    ).all()
    for row in rows:
        if row.had_own:
            set_desired(conn, row.device_id, row.previous_name, row.previous_version)
        else:
            clear_desired(conn, row.device_id)
    return [row.device_id for row in rows]


def wave_health(conn: Connection, row: Row[Any]) -> WaveHealth:
    """Health of every device assigned so far, on the rollout's model, since the rollout started."""
    members = select(rollout_devices.c.device_id).where(
        rollout_devices.c.rollout_id == row.id, rollout_devices.c.assigned_at.is_not(None)
    )
    device_rows = conn.execute(
        select(devices.c.device_id, devices.c.presence, devices.c.model_name, devices.c.model_version).where(
            devices.c.device_id.in_(members)
        )
    ).all()
    started = utc(row.created_at)
    on_model = and_(telemetry.c.model_name == row.model_name, telemetry.c.model_version == row.model_version)
    windows = conn.execute(
        select(
            telemetry.c.device_id,
            telemetry.c.requests,
            telemetry.c.errors,
            telemetry.c.latency_p95,
            telemetry.c.drift_psi,
            telemetry.c.low_confidence_share,
        ).where(telemetry.c.device_id.in_(members), on_model, telemetry.c.window_start >= started)
    ).all()
    baseline = (
        conn.execute(
            select(telemetry.c.latency_p95).where(
                telemetry.c.device_id.in_(members),
                telemetry.c.window_end <= started,
                telemetry.c.window_end > started - BASELINE_SPAN,
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
    failures = conn.execute(
        select(events.c.device_id, events.c.state, events.c.reason).where(
            events.c.device_id.in_(members),
            events.c.target_name == row.model_name,
            events.c.target_version == row.model_version,
            events.c.state.in_(sorted(FAILED_INSTALL_STATES)),
            events.c.ok.is_(False),
            events.c.received_at >= started,
        )
    ).all()
    return WaveHealth(
        devices=len(device_rows),
        on_target=sum(
            1 for d in device_rows if (d.model_name, d.model_version) == (row.model_name, row.model_version)
        ),
        offline=sum(1 for d in device_rows if d.presence != "online"),
        rollbacks=[f"{f.device_id}: {f.state} ({f.reason or 'no reason given'})" for f in failures],
        windows=len(windows),
        devices_with_windows=len({w.device_id for w in windows}),
        requests=sum(w.requests for w in windows),
        errors=sum(w.errors for w in windows),
        latency_p95=[w.latency_p95 for w in windows if w.latency_p95 is not None],
        baseline_p95=[float(v) for v in baseline],
        drift_psi=[w.drift_psi for w in windows if w.drift_psi is not None],
        low_confidence_share=[w.low_confidence_share for w in windows if w.low_confidence_share is not None],
    )


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
    )


def list_views(conn: Connection, limit: int = 100) -> list[RolloutView]:
    rows = conn.execute(select(rollouts).order_by(rollouts.c.id.desc()).limit(limit)).all()
    return [view(conn, row) for row in rows]
