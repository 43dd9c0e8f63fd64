"""Desired state: which model each device (or the whole fleet, ``FLEET_DEFAULT``) should run."""

from __future__ import annotations

from sqlalchemy import Connection, and_, insert, select, update

from fleet.storage.models import model_info
from fleet.storage.records import Assignment
from fleet.storage.schema import FLEET_DEFAULT, desired, devices, models
from fleet.storage.times import now, utc


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
    return Assignment(model=model_info(row), updated_at=utc(row.updated_at), target=row.target)


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


def models_allowed_for(conn: Connection, device_id: str) -> set[tuple[str, str]]:
    """(name, version) a device may download: what it should run, and what it runs now."""
    allowed: set[tuple[str, str]] = set()
    assignment = desired_for(conn, device_id)
    if assignment is not None:
        allowed.add((assignment.model.name, assignment.model.version))
    running = conn.execute(
        select(devices.c.model_name, devices.c.model_version).where(devices.c.device_id == device_id)
    ).first()
    if running is not None and running.model_name is not None and running.model_version is not None:
        allowed.add((running.model_name, running.model_version))
    return allowed
