"""``/api/v1/devices``: the device registry, desired state, telemetry and update events."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from fleet.api.audit import Audit
from fleet.api.context import FleetContext, get_context
from fleet.api.device_pages import LIST_RESPONSES, page_response
from fleet.api.grants import grant_store
from fleet.api.security import Admin, DeviceOrViewer, Operator, Viewer
from fleet.deploy import desired_state
from fleet.device_list import DeviceListQuery
from fleet.errors import ConflictError, NotFoundError
from fleet.names import DeviceId
from fleet.provision import DeviceAddRequest, DeviceLabels, Provisioned, provision
from fleet.storage import repository
from fleet.storage.capture import policy_for as capture_policy_for
from fleet.storage.device_page import device_page
from fleet.views import DeviceView, EventRow, TelemetryRow
from protocol.messages import DesiredState

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
Context = Annotated[FleetContext, Depends(get_context)]
DeviceIdPath = Annotated[DeviceId, Path(description="letters, digits, _ . -; at most 64")]
Limit = Annotated[int, Query(ge=1, le=1000, description="newest first, at most this many")]


@router.post("", status_code=201, response_model=Provisioned)
def add_device(body: DeviceAddRequest, context: Context, who: Admin, audit: Audit) -> Provisioned:
    """Provision a device: its secret (returned once), password-file line, ACL and agent config
    pointing at the fleet and broker as the device reaches them (400 when that would be loopback)."""
    fleet_url, mqtt_host, mqtt_port = context.endpoints().for_device(body)
    answer, hashed = provision(
        body, fleet_url=fleet_url, mqtt_host=mqtt_host, mqtt_port=mqtt_port, prefix=context.topics.prefix
    )
    with context.engine.begin() as conn:
        if repository.device_secret_hash(conn, body.device_id) is not None:
            raise ConflictError(
                f"device {body.device_id} is already provisioned (revoked or not): "
                "rotate its secret, or delete it first"
            )
        repository.upsert_device_meta(
            conn,
            body.device_id,
            now=repository.now(),
            group=body.group,
            tags=body.tags,
            secret_hash=hashed,
        )
        if context.password_file is not None:  # inside the transaction: a failure stores nothing
            answer = answer.model_copy(
                update={"broker": context.password_file.apply(body.device_id, answer.password_file_line)}
            )
    audit.record(who, "device.add", body.device_id, {"group": body.group, "tags": body.tags})
    return answer


@router.patch("/{device_id}", response_model=DeviceLabels)
def label_device(
    device_id: DeviceIdPath, body: DeviceLabels, context: Context, who: Operator, audit: Audit
) -> DeviceLabels:
    """Set a device's group and/or tags (used by rollout targets)."""
    with context.engine.begin() as conn:
        repository.upsert_device_meta(conn, device_id, now=repository.now(), group=body.group, tags=body.tags)
        device = repository.get_device(conn, device_id)
    audit.record(who, "device.patch", device_id, body.model_dump(mode="json", exclude_none=True))
    if device is None:
        return body
    return DeviceLabels(group=device.group, tags=device.tags)


@router.get("", response_model=None, responses=LIST_RESPONSES)
def list_devices(
    request: Request, context: Context, _who: Viewer, query: Annotated[DeviceListQuery, Query()]
) -> Response:
    """One page of the devices (those that reported, and provisioned ones that never did, state
    provisioned), filtered and sorted; X-Total-Count and X-Next-Cursor / Link say what is left."""
    with context.engine.begin() as conn:
        page = device_page(conn, query)
    return page_response(request, page)


@router.get("/{device_id}", response_model=DeviceView)
def get_device(device_id: DeviceIdPath, context: Context, _who: Viewer) -> DeviceView:
    with context.engine.begin() as conn:
        device = repository.get_device(conn, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id} was provisioned or has reported to this fleet")
    return device


# Unset members stay out (an agent from before rollback grants refuses unknown members).
@router.get("/{device_id}/desired", response_model=DesiredState, response_model_exclude_none=True)
def get_desired(device_id: DeviceIdPath, context: Context, _who: DeviceOrViewer) -> DesiredState:
    """Any valid device id may ask: a device not yet seen gets the fleet-wide default."""
    state = desired_state(context.engine, device_id, context.base_url)
    with context.engine.begin() as conn:
        capture = capture_policy_for(conn, device_id)
    if capture is not None:
        state = state.model_copy(update={"capture": capture})
    if state.model is None:
        return state
    model = state.model  # with the operator's rollback grant for it, when one covers this device
    store = grant_store(context)
    grant = store.for_device(model.name, model.version, model.sha256, device_id, repository.now())
    return state if grant is None else state.model_copy(update={"rollback_grant": grant})


@router.delete("/{device_id}/desired", status_code=204)
def clear_desired(device_id: DeviceIdPath, context: Context, who: Operator, audit: Audit) -> None:
    """Drop the device's own assignment so it follows the fleet-wide default again."""
    with context.engine.begin() as conn:
        if not repository.clear_desired(conn, device_id):
            raise NotFoundError(f"device {device_id} has no assignment of its own")
    audit.record(who, "device.clear_desired", device_id)


@router.get("/{device_id}/telemetry", response_model=list[TelemetryRow])
def get_telemetry(
    device_id: DeviceIdPath, context: Context, _who: Viewer, limit: Limit = 100
) -> list[TelemetryRow]:
    with context.engine.begin() as conn:
        return repository.list_telemetry(conn, device_id, limit)


@router.get("/{device_id}/series")
def get_series(
    device_id: DeviceIdPath,
    context: Context,
    _who: Viewer,
    hours: Annotated[float, Query(gt=0, le=24 * 400, description="how far back")] = 6,
    points: Annotated[int, Query(ge=10, le=5000, description="at most this many points")] = 360,
) -> dict[str, Any]:
    """Chart data: one list per column (``t``, latency, throughput, errors, CPU, memory, temperature,
    prediction health), bucket-averaged to at most ``points``; hourly rollups beyond the raw retention."""
    until = repository.now()
    since = until - timedelta(hours=hours)
    with context.engine.begin() as conn:
        return repository.telemetry_series(conn, device_id, since, until, points)


@router.get("/{device_id}/events", response_model=list[EventRow])
def get_events(device_id: DeviceIdPath, context: Context, _who: Viewer, limit: Limit = 100) -> list[EventRow]:
    with context.engine.begin() as conn:
        return repository.list_events(conn, device_id, limit)
