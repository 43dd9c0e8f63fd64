"""Devices as the API shows them (status, desired model, newest window, labels), their provisioning
record, and their telemetry and update-event history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from fleet.storage.device_tags import set_device_tags
from fleet.storage.metrics import METRIC_NAMES
from fleet.storage.schema import (
    FLEET_DEFAULT,
    desired,
    device_latest,
    device_meta,
    devices,
    events,
    telemetry,
)
from fleet.storage.times import utc
from fleet.views import (
    NEVER_SEEN,
    DeviceState,
    DeviceView,
    EventRow,
    ModelVersionRef,
    TelemetryRow,
    TelemetrySummary,
)


def _ref(name: str | None, version: str | None, sha256: str | None = None) -> ModelVersionRef | None:
    if name is None or version is None:
        return None
    return ModelVersionRef(name=name, version=version, sha256=sha256)


def _device_query() -> Any:
    # The newest window per device from ``device_latest`` (one row per device, kept by the ingest):
    # the list no longer looks into the telemetry table, whose size grows with the retention.
    own = desired.alias("own")
    fleet = desired.alias("fleet")
    return (
        select(
            devices,
            device_latest.c.window_end,
            *(device_latest.c[name] for name in METRIC_NAMES),
            func.coalesce(own.c.model_name, fleet.c.model_name).label("desired_name"),
            func.coalesce(own.c.model_version, fleet.c.model_version).label("desired_version"),
            device_meta.c.group_name,
            device_meta.c.tags,
            device_meta.c.revoked_at,
        )
        .select_from(devices)
        .outerjoin(device_meta, device_meta.c.device_id == devices.c.device_id)
        .outerjoin(device_latest, device_latest.c.device_id == devices.c.device_id)
        .outerjoin(own, own.c.target == devices.c.device_id)
        .outerjoin(fleet, fleet.c.target == FLEET_DEFAULT)
    )


def _device_view(row: Row[Any]) -> DeviceView:
    summary = None
    if row.window_end is not None:
        summary = TelemetrySummary(
            window_end=utc(row.window_end), **{name: row._mapping[name] for name in METRIC_NAMES}
        )
    return DeviceView(
        device_id=row.device_id,
        state=DeviceState.REVOKED if row.revoked_at is not None else DeviceState.ACTIVE,
        presence=row.presence,
        last_seen=utc(row.last_seen),
        first_seen=utc(row.first_seen),
        agent_version=row.agent_version,
        runtime=row.runtime,
        model=_ref(row.model_name, row.model_version, row.model_sha256),
        committed=_ref(row.committed_name, row.committed_version, row.committed_sha256),
        desired=_ref(row.desired_name, row.desired_version),
        update_state=row.update_state,
        telemetry=summary,
        group=row.group_name,
        tags=list(row.tags or []),
        config=row.config_report,
    )


def _unseen_query() -> Any:
    """Provisioned devices (a secret was issued) that never reported: no ``devices`` row yet."""
    own = desired.alias("own")
    fleet = desired.alias("fleet")
    seen = select(devices.c.device_id).where(devices.c.device_id == device_meta.c.device_id)
    return (
        select(
            device_meta,
            func.coalesce(own.c.model_name, fleet.c.model_name).label("desired_name"),
            func.coalesce(own.c.model_version, fleet.c.model_version).label("desired_version"),
        )
        .select_from(device_meta)
        .outerjoin(own, own.c.target == device_meta.c.device_id)
        .outerjoin(fleet, fleet.c.target == FLEET_DEFAULT)
        .where(device_meta.c.secret_hash.is_not(None), ~seen.exists())
    )


def _unseen_view(row: Row[Any]) -> DeviceView:
    return DeviceView(
        device_id=row.device_id,
        state=DeviceState.REVOKED if row.revoked_at is not None else DeviceState.PROVISIONED,
        presence=NEVER_SEEN,
        last_seen=None,
        first_seen=None,
        agent_version=None,
        runtime=None,
        model=None,
        desired=_ref(row.desired_name, row.desired_version),
        update_state=None,
        telemetry=None,
        group=row.group_name,
        tags=list(row.tags or []),
    )


def list_devices(conn: Connection) -> list[DeviceView]:
    """Every device that reported, as views (alerts and the summary judge only those; the API's
    paged list is ``fleet.storage.device_page``)."""
    return [_device_view(row) for row in conn.execute(_device_query().order_by(devices.c.device_id))]


def get_device(conn: Connection, device_id: str) -> DeviceView | None:
    unseen = conn.execute(_unseen_query().where(device_meta.c.device_id == device_id)).first()
    row = conn.execute(_device_query().where(devices.c.device_id == device_id)).first()
    if row is not None:
        return _device_view(row)
    return None if unseen is None else _unseen_view(unseen)


def list_telemetry(conn: Connection, device_id: str, limit: int) -> list[TelemetryRow]:
    query = (
        select(telemetry)
        .where(telemetry.c.device_id == device_id)
        .order_by(telemetry.c.id.desc())
        .limit(limit)
    )
    return [
        TelemetryRow(
            id=row.id,
            device_id=row.device_id,
            seq=row.seq,
            window_start=utc(row.window_start),
            window_end=utc(row.window_end),
            received_at=utc(row.received_at),
            payload=row.payload,
        )
        for row in conn.execute(query)
    ]


def list_events(conn: Connection, device_id: str, limit: int) -> list[EventRow]:
    query = select(events).where(events.c.device_id == device_id).order_by(events.c.id.desc()).limit(limit)
    return [
        EventRow(
            id=row.id,
            device_id=row.device_id,
            ts=utc(row.ts),
            received_at=utc(row.received_at),
            update_id=row.update_id,
            state=row.state,
            ok=row.ok,
            reason=row.reason,
            target=ModelVersionRef(
                name=row.target_name, version=row.target_version, sha256=row.target_sha256
            ),
            previous=_ref(row.previous_name, row.previous_version),
        )
        for row in conn.execute(query)
    ]


def upsert_device_meta(
    conn: Connection,
    device_id: str,
    *,
    now: datetime,
    group: str | None = None,
    tags: list[str] | None = None,
    secret_hash: str | None = None,
) -> None:
    """Create or update a device's group, tags and secret; None leaves a field as it is."""
    values: dict[str, Any] = {}
    if group is not None:
        values["group_name"] = group or None
    if tags is not None:
        values["tags"] = sorted(set(tags))
    if secret_hash is not None:
        values["secret_hash"] = secret_hash
    if tags is not None:
        set_device_tags(conn, device_id, values["tags"])
    if values:
        changed = conn.execute(
            update(device_meta).where(device_meta.c.device_id == device_id).values(**values)
        ).rowcount
        if changed:
            return
    elif conn.execute(select(device_meta.c.device_id).where(device_meta.c.device_id == device_id)).first():
        return
    conn.execute(
        insert(device_meta).values(
            device_id=device_id,
            group_name=values.get("group_name"),
            tags=values.get("tags", []),
            secret_hash=values.get("secret_hash"),
            created_at=utc(now),
        )
    )


def device_secret_hash(conn: Connection, device_id: str) -> str | None:
    row = conn.execute(select(device_meta.c.secret_hash).where(device_meta.c.device_id == device_id)).first()
    return None if row is None else row.secret_hash
