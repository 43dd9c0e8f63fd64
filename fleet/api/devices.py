"""``/api/v1/devices``: the device registry, desired state, telemetry and update events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from fleet.api.context import FleetContext, get_context
from fleet.deploy import desired_state
from fleet.errors import NotFoundError
from fleet.storage import repository
from fleet.views import DeviceView, EventRow, TelemetryRow
from protocol.messages import DesiredState
from protocol.schema import DEVICE_ID_PATTERN

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
Context = Annotated[FleetContext, Depends(get_context)]
DeviceIdPath = Annotated[
    str, Path(pattern=DEVICE_ID_PATTERN, description="letters, digits, _ . -; at most 64")
]
Limit = Annotated[int, Query(ge=1, le=1000, description="newest first, at most this many")]


@router.get("", response_model=list[DeviceView])
def list_devices(context: Context) -> list[DeviceView]:
    with context.engine.begin() as conn:
        return repository.list_devices(conn)


@router.get("/{device_id}", response_model=DeviceView)
def get_device(device_id: DeviceIdPath, context: Context) -> DeviceView:
    with context.engine.begin() as conn:
        device = repository.get_device(conn, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id} has reported its status to this fleet")
    return device


@router.get("/{device_id}/desired", response_model=DesiredState)
def get_desired(device_id: DeviceIdPath, context: Context) -> DesiredState:
    """Any valid device id may ask: a device not yet seen gets the fleet-wide default."""
    return desired_state(context.engine, device_id, context.base_url)


@router.delete("/{device_id}/desired", status_code=204)
def clear_desired(device_id: DeviceIdPath, context: Context) -> None:
    """Drop the device's own assignment so it follows the fleet-wide default again."""
    with context.engine.begin() as conn:
        if not repository.clear_desired(conn, device_id):
            raise NotFoundError(f"device {device_id} has no assignment of its own")


@router.get("/{device_id}/telemetry", response_model=list[TelemetryRow])
def get_telemetry(device_id: DeviceIdPath, context: Context, limit: Limit = 100) -> list[TelemetryRow]:
    with context.engine.begin() as conn:
        return repository.list_telemetry(conn, device_id, limit)


@router.get("/{device_id}/events", response_model=list[EventRow])
def get_events(device_id: DeviceIdPath, context: Context, limit: Limit = 100) -> list[EventRow]:
    with context.engine.begin() as conn:
        return repository.list_events(conn, device_id, limit)
