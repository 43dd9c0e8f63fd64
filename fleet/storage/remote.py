"""Remote configuration rows (per device, or per group) and remote log requests with their answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from fleet.storage.schema import device_config, device_meta, log_requests
from fleet.storage.times import now, utc
from protocol.remote import ConfigValue, RemoteConfig

GROUP_PREFIX = "group:"


def group_target(group: str) -> str:
    return f"{GROUP_PREFIX}{group}"


def set_config(conn: Connection, target: str, config: RemoteConfig | None) -> bool:
    """Store (or with None, drop) the remote config of a device id or ``group:<name>``; whether
    anything was there before."""
    existed = bool(conn.execute(delete(device_config).where(device_config.c.target == target)).rowcount)
    if config is not None:
        conn.execute(
            insert(device_config).values(
                target=target, settings=config.settings, revision=config.revision, updated_at=now()
            )
        )
    return existed


def config_for(conn: Connection, device_id: str) -> tuple[RemoteConfig, str] | None:
    """The device's remote config and where it comes from (its id, or ``group:<name>``)."""
    group = conn.execute(
        select(device_meta.c.group_name).where(device_meta.c.device_id == device_id)
    ).scalar()
    targets = [device_id] + ([group_target(group)] if group else [])
    rows = {
        row.target: row
        for row in conn.execute(select(device_config).where(device_config.c.target.in_(targets)))
    }
    for target in targets:
        row = rows.get(target)
        if row is not None:
            settings: dict[str, dict[str, ConfigValue]] = row.settings
            return RemoteConfig(settings=settings, revision=row.revision), target
    return None


def devices_in_group(conn: Connection, group: str) -> list[str]:
    query = (
        select(device_meta.c.device_id)
        .where(device_meta.c.group_name == group)
        .order_by(device_meta.c.device_id)
    )
    return list(conn.execute(query).scalars())


def add_log_request(conn: Connection, request_id: str, device_id: str, request: dict[str, Any]) -> None:
    conn.execute(
        insert(log_requests).values(
            request_id=request_id, device_id=device_id, requested_at=now(), request=request, state="pending"
        )
    )


def finish_log_request(
    conn: Connection,
    request_id: str,
    device_id: str,
    *,
    body: bytes | None,
    lines: int,
    truncated: bool,
    error: str | None,
) -> bool:
    """Store the answer of a pending request (only the device it was asked of may answer)."""
    changed = conn.execute(
        update(log_requests)
        .where(
            log_requests.c.request_id == request_id,
            log_requests.c.device_id == device_id,
            log_requests.c.state == "pending",
        )
        .values(
            state="failed" if error else "done",
            completed_at=now(),
            body=body,
            lines=lines,
            truncated=truncated,
            error=error,
        )
    ).rowcount
    return bool(changed)


def get_log_request(conn: Connection, request_id: str) -> Any:
    return conn.execute(select(log_requests).where(log_requests.c.request_id == request_id)).first()


def expire_log_requests(conn: Connection, older_than: datetime) -> int:
    return int(conn.execute(delete(log_requests).where(log_requests.c.requested_at < older_than)).rowcount)


def requested_at(row: Any) -> datetime:
    return utc(row.requested_at)
