"""Every read and write of the fleet database. Functions take a Connection; callers own the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, Table, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from fleet.ingest.decode import DeadLetter, Decoded
from fleet.storage.engine import RawJson
from fleet.storage.schema import (
    FLEET_DEFAULT,
    dead_letters,
    desired,
    device_meta,
    devices,
    events,
    models,
    telemetry,
)
from fleet.views import (
    DeadLetterRow,
    DeviceView,
    EventRow,
    ModelDetail,
    ModelInfo,
    ModelVersionRef,
    TelemetryRow,
    TelemetrySummary,
)
from protocol.messages import DeviceStatus, TelemetryWindow, UpdateEvent

COMMIT_STATE = "commit"


def utc(value: datetime) -> datetime:
    """Timestamps go in as UTC and come out timezone-aware (SQLite drops the offset)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class NewModel:
    name: str
    version: str
    sha256: str
    size: int
    task: str
    quantization: str
    key_id: str
    created_at: datetime
    path: str
    manifest: dict[str, Any]


def _model_info(row: Row[Any]) -> ModelInfo:
    return ModelInfo(
        name=row.name,
        version=row.version,
        sha256=row.sha256,
        size=row.size,
        task=row.task,
        quantization=row.quantization,
        created_at=utc(row.created_at),
        uploaded_at=utc(row.uploaded_at),
        key_id=row.key_id,
    )


def insert_model(conn: Connection, model: NewModel) -> ModelInfo:
    values = {**model.__dict__, "created_at": utc(model.created_at), "uploaded_at": now()}
    conn.execute(insert(models).values(**values))
    info = get_model(conn, model.name, model.version)
    assert info is not None
    return info


def get_model(conn: Connection, name: str, version: str) -> ModelInfo | None:
    row = conn.execute(select(models).where(models.c.name == name, models.c.version == version)).first()
    return None if row is None else _model_info(row)


def get_model_detail(conn: Connection, name: str, version: str) -> ModelDetail | None:
    row = conn.execute(select(models).where(models.c.name == name, models.c.version == version)).first()
    if row is None:
        return None
    return ModelDetail(**_model_info(row).model_dump(), manifest=row.manifest)


def get_model_path(conn: Connection, name: str, version: str) -> tuple[ModelInfo, str] | None:
    row = conn.execute(select(models).where(models.c.name == name, models.c.version == version)).first()
    return None if row is None else (_model_info(row), row.path)


def list_models(conn: Connection) -> list[ModelInfo]:
    rows = conn.execute(select(models).order_by(models.c.name, models.c.uploaded_at, models.c.id))
    return [_model_info(row) for row in rows]


# ---------------------------------------------------------------- desired state


@dataclass(frozen=True)
class Assignment:
    """The model a device should run, resolved: per-device row first, else the fleet default."""

    model: ModelInfo
    updated_at: datetime
    target: str


def set_desired(conn: Connection, target: str, name: str, version: str) -> None:
    values = {"model_name": name, "model_version": version, "updated_at": now()}
    changed = conn.execute(update(desired).where(desired.c.target == target).values(**values)).rowcount
    if not changed:
        conn.execute(insert(desired).values(target=target, **values))


def clear_desired(conn: Connection, target: str) -> bool:
    return bool(conn.execute(desired.delete().where(desired.c.target == target)).rowcount)


def desired_for(conn: Connection, device_id: str) -> Assignment | None:
    query = (
        select(desired.c.target, desired.c.updated_at, models)
        .join(
            models, and_(models.c.name == desired.c.model_name, models.c.version == desired.c.model_version)
        )
        .where(desired.c.target.in_([device_id, FLEET_DEFAULT]))
    )
    rows = {row.target: row for row in conn.execute(query)}
    row = rows.get(device_id) or rows.get(FLEET_DEFAULT)
    if row is None:
        return None
    return Assignment(model=_model_info(row), updated_at=utc(row.updated_at), target=row.target)


def device_ids_following(conn: Connection, target: str) -> list[str]:
    """Known devices whose desired model comes from ``target`` (one device, or the fleet default)."""
    if target != FLEET_DEFAULT:
        exists = conn.execute(select(devices.c.device_id).where(devices.c.device_id == target)).first()
        return [target] if exists else []
    overridden = select(desired.c.target).where(desired.c.target != FLEET_DEFAULT)
    query = (
        select(devices.c.device_id)
        .where(devices.c.device_id.not_in(overridden))
        .order_by(devices.c.device_id)
    )
    return list(conn.execute(query).scalars())


# ---------------------------------------------------------------- devices


def _ref(name: str | None, version: str | None, sha256: str | None = None) -> ModelVersionRef | None:
    if name is None or version is None:
        return None
    return ModelVersionRef(name=name, version=version, sha256=sha256)


def _device_query() -> Any:
    # The newest window per device through the (device_id, id) index: one index lookup per device,
    # not a GROUP BY over the whole telemetry table.
    latest = (
        select(func.max(telemetry.c.id))
        .where(telemetry.c.device_id == devices.c.device_id)
        .correlate(devices)
        .scalar_subquery()
    )
    own = desired.alias("own")
    fleet = desired.alias("fleet")
    return (
        select(
            devices,
            telemetry.c.window_end,
            telemetry.c.requests,
            telemetry.c.errors,
            telemetry.c.latency_p50,
            telemetry.c.latency_p95,
            telemetry.c.latency_p99,
            telemetry.c.cpu_percent,
            telemetry.c.process_rss_bytes,
            telemetry.c.memory_used_percent,
            telemetry.c.temperature_c,
            telemetry.c.drift_psi,
            telemetry.c.low_confidence_share,
            func.coalesce(own.c.model_name, fleet.c.model_name).label("desired_name"),
            func.coalesce(own.c.model_version, fleet.c.model_version).label("desired_version"),
            device_meta.c.group_name,
            device_meta.c.tags,
        )
        .select_from(devices)
        .outerjoin(device_meta, device_meta.c.device_id == devices.c.device_id)
        .outerjoin(telemetry, telemetry.c.id == latest)
        .outerjoin(own, own.c.target == devices.c.device_id)
        .outerjoin(fleet, fleet.c.target == FLEET_DEFAULT)
    )


def _device_view(row: Row[Any]) -> DeviceView:
    summary = None
    if row.window_end is not None:
        summary = TelemetrySummary(
            window_end=utc(row.window_end),
            requests=row.requests,
            errors=row.errors,
            latency_p50=row.latency_p50,
            latency_p95=row.latency_p95,
            latency_p99=row.latency_p99,
            cpu_percent=row.cpu_percent,
            process_rss_bytes=row.process_rss_bytes,
            memory_used_percent=row.memory_used_percent,
            temperature_c=row.temperature_c,
            drift_psi=row.drift_psi,
            low_confidence_share=row.low_confidence_share,
        )
    return DeviceView(
        device_id=row.device_id,
        presence=row.presence,
        last_seen=utc(row.last_seen),
        first_seen=utc(row.first_seen),
        agent_version=row.agent_version,
        runtime=row.runtime,
        model=_ref(row.model_name, row.model_version, row.model_sha256),
        desired=_ref(row.desired_name, row.desired_version),
        update_state=row.update_state,
        telemetry=summary,
        group=row.group_name,
        tags=list(row.tags or []),
    )


def list_devices(conn: Connection) -> list[DeviceView]:
    rows = conn.execute(_device_query().order_by(devices.c.device_id))
    return [_device_view(row) for row in rows]


def get_device(conn: Connection, device_id: str) -> DeviceView | None:
    row = conn.execute(_device_query().where(devices.c.device_id == device_id)).first()
    return None if row is None else _device_view(row)


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


def list_dead_letters(conn: Connection, limit: int) -> list[DeadLetterRow]:
    query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    return [
        DeadLetterRow(
            id=row.id,
            topic=row.topic,
            reason=row.reason,
            detail=row.detail,
            payload_prefix=row.payload_prefix,
            payload_size=row.payload_size,
            received_at=utc(row.received_at),
        )
        for row in conn.execute(query)
    ]


# ---------------------------------------------------------------- provisioning and labels


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


def model_in_use(conn: Connection, name: str, version: str) -> list[str]:
    """Why a model cannot be deleted: desired-state rows pointing at it, and devices running it."""
    reasons = [
        "the fleet default" if target == FLEET_DEFAULT else f"desired by {target}"
        for target in conn.execute(
            select(desired.c.target).where(desired.c.model_name == name, desired.c.model_version == version)
        ).scalars()
    ]
    reasons += [
        f"running on {device_id}"
        for device_id in conn.execute(
            select(devices.c.device_id).where(
                devices.c.model_name == name, devices.c.model_version == version
            )
        ).scalars()
    ]
    return reasons


def delete_model(conn: Connection, name: str, version: str) -> str | None:
    """Delete the registry row; the stored bundle path, or None when there was no such model."""
    found = get_model_path(conn, name, version)
    if found is None:
        return None
    conn.execute(models.delete().where(models.c.name == name, models.c.version == version))
    return found[1]


# ---------------------------------------------------------------- ingestion


def store_dead_letter(conn: Connection, letter: DeadLetter) -> None:
    conn.execute(
        insert(dead_letters).values(
            topic=letter.topic,
            reason=letter.reason.value,
            detail=letter.detail,
            payload_prefix=letter.payload_prefix,
            payload_size=letter.payload_size,
            received_at=utc(letter.received_at),
        )
    )


def store_decoded(conn: Connection, item: Decoded) -> bool:
    """Store one valid device message; False when it was a duplicate (a QoS 1 redelivery)."""
    message = item.message
    received_at = utc(item.received_at)
    if isinstance(message, DeviceStatus):
        _store_status(conn, message, received_at)
        return True
    if isinstance(message, TelemetryWindow):
        return _store_telemetry(conn, message, received_at)
    return _store_event(conn, message, received_at)


def store_batch(conn: Connection, items: Iterable[Decoded | DeadLetter]) -> tuple[int, int]:
    """Store a batch in the caller's transaction; returns (stored, duplicates).

    Telemetry windows, the bulk of the stream, go in with one multi-row INSERT per batch (statement
    building, not the database, is what costs per message); status and events keep their order.
    """
    stored = duplicates = 0
    windows: list[tuple[TelemetryWindow, datetime, bytes | None]] = []
    for item in items:
        if isinstance(item, DeadLetter):
            store_dead_letter(conn, item)
        elif isinstance(item.message, TelemetryWindow) and conn.dialect.name in ("sqlite", "postgresql"):
            windows.append((item.message, utc(item.received_at), item.raw))
        elif store_decoded(conn, item):
            stored += 1
        else:
            duplicates += 1
    if windows:
        inserted = _store_telemetry_many(conn, windows)
        stored += inserted
        duplicates += len(windows) - inserted
    return stored, duplicates


def _store_telemetry_many(
    conn: Connection, windows: list[tuple[TelemetryWindow, datetime, bytes | None]]
) -> int:
    """One INSERT ... ON CONFLICT DO NOTHING RETURNING for many windows, then one UPDATE per device."""
    rows = [_telemetry_row(window, received_at, raw) for window, received_at, raw in windows]
    keys = ["device_id", "seq", "window_start"]
    statement: Any
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(telemetry).on_conflict_do_nothing(index_elements=keys)
    else:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(telemetry).on_conflict_do_nothing(index_elements=keys)
    inserted = conn.execute(statement.returning(telemetry.c.device_id), rows).all()
    seen: dict[str, datetime] = {}
    for row in rows:
        if row["received_at"] > seen.get(row["device_id"], row["received_at"] - timedelta(1)):
            seen[row["device_id"]] = row["received_at"]
    touched = {row.device_id for row in inserted}
    if touched:
        conn.execute(
            update(devices)
            .where(devices.c.device_id == bindparam("d"), devices.c.last_seen < bindparam("seen"))
            .values(last_seen=bindparam("seen")),
            [{"d": device_id, "seen": seen[device_id]} for device_id in sorted(touched)],
        )
    return len(inserted)


def _store_status(conn: Connection, status: DeviceStatus, received_at: datetime) -> None:
    values: dict[str, Any] = {
        "presence": status.presence.value,
        "status_ts": utc(status.ts),
        "last_seen": received_at,
        "agent_version": status.agent_version,
        "runtime": status.runtime,
    }
    if status.model is not None:
        values |= {
            "model_name": status.model.name,
            "model_version": status.model.version,
            "model_sha256": status.model.sha256,
        }
    if status.update_state is not None:
        values["update_state"] = status.update_state
    changed = conn.execute(
        update(devices).where(devices.c.device_id == status.device_id).values(**values)
    ).rowcount
    if not changed:
        conn.execute(insert(devices).values(device_id=status.device_id, first_seen=received_at, **values))


def _touch(conn: Connection, device_id: str, received_at: datetime, **values: Any) -> None:
    conn.execute(
        update(devices).where(devices.c.device_id == device_id).values(last_seen=received_at, **values)
    )


def _store_telemetry(conn: Connection, window: TelemetryWindow, received_at: datetime) -> bool:
    row = _telemetry_row(window, received_at)
    if not _insert_ignoring_duplicate(conn, telemetry, row, ("device_id", "seq", "window_start")):
        return False
    _touch(conn, window.device_id, received_at)
    return True


def _telemetry_row(
    window: TelemetryWindow, received_at: datetime, raw: bytes | None = None
) -> dict[str, Any]:
    latency = window.latency_ms
    resources = window.resources
    row = {
        "device_id": window.device_id,
        "seq": window.seq,
        "window_start": utc(window.window_start),
        "window_end": utc(window.window_end),
        "received_at": received_at,
        "model_name": window.model.name if window.model else None,
        "model_version": window.model.version if window.model else None,
        "requests": window.requests,
        "errors": sum(window.errors.values()),
        "latency_p50": latency.p50 if latency else None,
        "latency_p95": latency.p95 if latency else None,
        "latency_p99": latency.p99 if latency else None,
        "cpu_percent": resources.cpu_percent,
        "process_rss_bytes": resources.process_rss_bytes,
        "memory_used_percent": resources.memory_used_percent,
        "temperature_c": resources.temperature_c,
        "drift_psi": window.prediction.drift_psi if window.prediction else None,
        "low_confidence_share": window.prediction.low_confidence_share if window.prediction else None,
        # The payload exactly as the device sent it (validated): no second serialization.
        "payload": RawJson(raw.decode()) if raw is not None else window.model_dump(mode="json"),
    }
    return row


def _store_event(conn: Connection, event: UpdateEvent, received_at: datetime) -> bool:
    row = {
        "device_id": event.device_id,
        "ts": utc(event.ts),
        "received_at": received_at,
        "update_id": event.update_id,
        "state": event.state,
        "ok": event.ok,
        "reason": event.reason,
        "target_name": event.target.name,
        "target_version": event.target.version,
        "target_sha256": event.target.sha256,
        "previous_name": event.previous.name if event.previous else None,
        "previous_version": event.previous.version if event.previous else None,
        "payload": event.model_dump(mode="json"),
    }
    if not _insert_ignoring_duplicate(conn, events, row, ("device_id", "update_id", "state", "ts")):
        return False
    values: dict[str, Any] = {"update_state": event.state}
    if event.state == COMMIT_STATE and event.ok:
        values |= {
            "model_name": event.target.name,
            "model_version": event.target.version,
            "model_sha256": event.target.sha256,
        }
    _touch(conn, event.device_id, received_at, **values)
    return True


def _insert_ignoring_duplicate(
    conn: Connection, table: Table, row: Mapping[str, Any], keys: Sequence[str]
) -> bool:
    """INSERT unless a row with the same ``keys`` exists; True when a row was inserted."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(table).values(**row).on_conflict_do_nothing(index_elements=list(keys))
        return bool(conn.execute(lite).rowcount)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        # psycopg reports rowcount -1 for this statement: ask for a returned row instead.
        pg = (
            pg_insert(table)
            .values(**row)
            .on_conflict_do_nothing(index_elements=list(keys))
            .returning(table.c[keys[0]])
        )
        return conn.execute(pg).first() is not None
    try:
        with conn.begin_nested():
            conn.execute(insert(table).values(**row))
    except IntegrityError:
        return False
    return True


# ---------------------------------------------------------------- time series

SERIES_COLUMNS = (
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "throughput_rps",
    "error_rate",
    "cpu_percent",
    "memory_used_percent",
    "process_rss_mib",
    "temperature_c",
    "drift_psi",
    "low_confidence_share",
)


def telemetry_series(
    conn: Connection, device_id: str, since: datetime, until: datetime, max_points: int
) -> dict[str, Any]:
    """Columns of one device's windows in ``[since, until)``, averaged into at most ``max_points`` buckets.

    Raw windows where they are kept; hourly rollups (``telemetry_hourly``) for older hours.
    """
    from fleet.storage.schema import telemetry_hourly

    raw = conn.execute(
        select(
            telemetry.c.window_start,
            telemetry.c.window_end,
            telemetry.c.requests,
            telemetry.c.errors,
            telemetry.c.latency_p50,
            telemetry.c.latency_p95,
            telemetry.c.latency_p99,
            telemetry.c.cpu_percent,
            telemetry.c.memory_used_percent,
            telemetry.c.process_rss_bytes,
            telemetry.c.temperature_c,
            telemetry.c.drift_psi,
            telemetry.c.low_confidence_share,
        )
        .where(
            telemetry.c.device_id == device_id,
            telemetry.c.window_start >= since,
            telemetry.c.window_start < until,
        )
        .order_by(telemetry.c.window_start)
    ).all()
    points: list[tuple[float, dict[str, float | None]]] = []
    for row in raw:
        start, end = utc(row.window_start), utc(row.window_end)
        seconds = max((end - start).total_seconds(), 1e-9)
        points.append(
            (
                start.timestamp(),
                {
                    "latency_p50": row.latency_p50,
                    "latency_p95": row.latency_p95,
                    "latency_p99": row.latency_p99,
                    "throughput_rps": row.requests / seconds,
                    "error_rate": row.errors / row.requests if row.requests else 0.0,
                    "cpu_percent": row.cpu_percent,
                    "memory_used_percent": row.memory_used_percent,
                    "process_rss_mib": row.process_rss_bytes / 1048576,
                    "temperature_c": row.temperature_c,
                    "drift_psi": row.drift_psi,
                    "low_confidence_share": row.low_confidence_share,
                },
            )
        )
    first_raw = points[0][0] if points else until.timestamp()
    hourly = conn.execute(
        select(telemetry_hourly)
        .where(
            telemetry_hourly.c.device_id == device_id,
            telemetry_hourly.c.hour >= since,
            telemetry_hourly.c.hour < min(until, datetime.fromtimestamp(first_raw, UTC)),
        )
        .order_by(telemetry_hourly.c.hour)
    ).all()
    older = [
        (
            utc(row.hour).timestamp(),
            {
                "latency_p50": row.latency_p50_avg,
                "latency_p95": row.latency_p95_avg,
                "latency_p99": row.latency_p99_max,
                "throughput_rps": row.requests / 3600,
                "error_rate": row.errors / row.requests if row.requests else 0.0,
                "cpu_percent": row.cpu_percent_avg,
                "memory_used_percent": row.memory_used_percent_avg,
                "process_rss_mib": None,
                "temperature_c": row.temperature_c_max,
                "drift_psi": row.drift_psi_avg,
                "low_confidence_share": row.low_confidence_share_avg,
            },
        )
        for row in hourly
    ]
    points = older + points
    start_s, end_s = since.timestamp(), until.timestamp()
    bucket = max((end_s - start_s) / max_points, 1e-9)
    if len(points) <= max_points:
        buckets = [[p] for p in points]
    else:
        grouped: dict[int, list[tuple[float, dict[str, float | None]]]] = {}
        for point in points:
            grouped.setdefault(int((point[0] - start_s) // bucket), []).append(point)
        buckets = [grouped[key] for key in sorted(grouped)]
    series: dict[str, Any] = {"t": [], **{column: [] for column in SERIES_COLUMNS}}
    for members in buckets:
        series["t"].append(datetime.fromtimestamp(members[0][0], UTC).isoformat())
        for column in SERIES_COLUMNS:
            values = [v for _, p in members if (v := p[column]) is not None]
            series[column].append(round(sum(values) / len(values), 4) if values else None)
    return {"device_id": device_id, "since": since.isoformat(), "until": until.isoformat(), "series": series}
