"""Device identities: the credentials HTTP auth checks, revocation, secret rotation and deletion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, String, any_, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from fleet.storage.device_tags import device_tags
from fleet.storage.schema import (
    desired,
    device_latest,
    device_meta,
    devices,
    events,
    telemetry,
    telemetry_hourly,
)
from fleet.storage.times import utc


@dataclass(frozen=True)
class Credentials:
    secret_hash: str
    revoked: bool


def device_credentials(conn: Connection, device_id: str) -> Credentials | None:
    """The stored secret of a provisioned device, and whether it was revoked; None if never provisioned."""
    query = select(device_meta.c.secret_hash, device_meta.c.revoked_at)
    row = conn.execute(query.where(device_meta.c.device_id == device_id)).first()
    if row is None or row.secret_hash is None:
        return None
    return Credentials(row.secret_hash, row.revoked_at is not None)


def revoked_among(conn: Connection, device_ids: set[str]) -> set[str]:
    """Which of these devices are revoked (one query; none asked, none run)."""
    if not device_ids:
        return set()
    asked = sorted(device_ids)
    among: Any
    if conn.dialect.name == "postgresql":
        # One array parameter: the statement's text does not change with the number of devices,
        # so the server keeps it prepared (an IN list is new text, parsed again, at every batch).
        among = device_meta.c.device_id == any_(bindparam("ids", asked, type_=ARRAY(String)))
    else:
        among = device_meta.c.device_id.in_(asked)
    query = select(device_meta.c.device_id).where(among, device_meta.c.revoked_at.is_not(None))
    return set(conn.execute(query).scalars())


def revoke_device(conn: Connection, device_id: str, now: datetime) -> None:
    """Mark a provisioned device revoked (kept once revoked: the first time stays)."""
    conn.execute(
        update(device_meta)
        .where(device_meta.c.device_id == device_id, device_meta.c.revoked_at.is_(None))
        .values(revoked_at=utc(now))
    )


def set_secret(conn: Connection, device_id: str, secret_hash: str) -> None:
    chosen = update(device_meta).where(device_meta.c.device_id == device_id)
    conn.execute(chosen.values(secret_hash=secret_hash))


def delete_device(conn: Connection, device_id: str) -> bool:
    """Forget a device: its identity, labels, status, own assignment, telemetry and events.
    False if the fleet knew nothing of it."""
    found = 0
    for table, column in (
        (device_meta, device_meta.c.device_id),
        (device_tags, device_tags.c.device_id),
        (devices, devices.c.device_id),
        (desired, desired.c.target),
        (telemetry, telemetry.c.device_id),
        (device_latest, device_latest.c.device_id),
        (telemetry_hourly, telemetry_hourly.c.device_id),
        (events, events.c.device_id),
    ):
        removed = conn.execute(delete(table).where(column == device_id)).rowcount
        if table is device_meta or table is devices:
            found += removed
    return found > 0
