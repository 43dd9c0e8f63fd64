"""The model registry's rows: add, find, list and delete models; say what still uses a version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, insert, select

from fleet.storage.records import NewModel
from fleet.storage.schema import FLEET_DEFAULT, desired, devices, models
from fleet.storage.times import now, utc
from fleet.views import ModelDetail, ModelInfo


def model_info(row: Row[Any]) -> ModelInfo:
    """A ``models`` row (or a join that carries its columns) as the API shows it."""
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
    return None if row is None else model_info(row)


def get_model_detail(conn: Connection, name: str, version: str) -> ModelDetail | None:
    row = conn.execute(select(models).where(models.c.name == name, models.c.version == version)).first()
    if row is None:
        return None
    return ModelDetail(**model_info(row).model_dump(), manifest=row.manifest)


def get_model_path(conn: Connection, name: str, version: str) -> tuple[ModelInfo, str] | None:
    row = conn.execute(select(models).where(models.c.name == name, models.c.version == version)).first()
    return None if row is None else (model_info(row), row.path)


def list_models(conn: Connection) -> list[ModelInfo]:
    rows = conn.execute(select(models).order_by(models.c.name, models.c.uploaded_at, models.c.id))
    return [model_info(row) for row in rows]


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
