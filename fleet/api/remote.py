"""Remote logs and remote configuration: ``/api/v1/devices/{id}/logs``, ``.../config`` and
``/api/v1/groups/{group}/config``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from fleet.api.audit import Audit
from fleet.api.context import FleetContext, get_context
from fleet.api.security import Operator, Viewer
from fleet.errors import NotFoundError
from fleet.names import DeviceId
from fleet.remote_config import checked, set_config
from fleet.remote_logs import new_request_id, read_answer, request_logs
from fleet.storage import remote, repository
from fleet.storage.remote import group_target
from fleet.views import View
from protocol.remote import (
    MAX_LOG_BYTES,
    MAX_LOG_LINES,
    ConfigReport,
    ConfigValue,
    LogLevel,
    LogRequest,
    RemoteConfig,
)

router = APIRouter(tags=["remote"])
Context = Annotated[FleetContext, Depends(get_context)]
DeviceIdPath = Annotated[DeviceId, Path(description="letters, digits, _ . -; at most 64")]
GroupPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="a device group")]


class LogAsk(View):
    lines: int = Field(200, ge=1, le=MAX_LOG_LINES, description="the newest this many lines")
    level: LogLevel = Field(LogLevel.INFO, description="at this level or above")
    since: datetime | None = Field(None, description="written at or after this time")
    max_bytes: int = Field(256 * 1024, ge=1024, le=MAX_LOG_BYTES, description="at most this much text")


class LogTicket(View):
    request_id: str
    device_id: str
    state: str


class LogAnswer(View):
    request_id: str
    device_id: str
    state: str = Field(description="pending (the device has not answered yet), done or failed")
    requested_at: datetime
    completed_at: datetime | None
    request: dict[str, Any]
    lines: int | None
    truncated: bool | None = Field(description="more lines matched than fit: the oldest were left out")
    error: str | None
    text: str | None = Field(description="the log, secrets redacted by the device")


class ConfigBody(View):
    settings: dict[str, dict[str, ConfigValue]] = Field(
        description='by agent.toml section and key, e.g. {"telemetry": {"interval_s": 30}}'
    )


class DeviceConfig(View):
    device_id: str
    desired: RemoteConfig | None = Field(description="the remote config the device should run")
    source: str | None = Field(description="where it comes from: the device id, or group:<name>")
    report: ConfigReport | None = Field(description="the device's own report on the newest it saw")
    in_sync: bool = Field(description="the device applied the desired config (or none is set)")


class ConfigResult(View):
    target: str
    config: RemoteConfig | None
    devices_notified: list[str]


def _known(context: FleetContext, device_id: str) -> None:
    with context.engine.begin() as conn:
        if (
            repository.get_device(conn, device_id) is None
            and repository.device_secret_hash(conn, device_id) is None
        ):
            raise NotFoundError(f"no device {device_id} was provisioned or has reported to this fleet")


@router.post("/api/v1/devices/{device_id}/logs", status_code=202, response_model=LogTicket)
async def ask_logs(
    device_id: DeviceIdPath, body: LogAsk, context: Context, who: Operator, audit: Audit
) -> LogTicket:
    """Ask the device for its recent log; poll ``GET .../logs/{request_id}`` for the answer."""
    await run_in_threadpool(_known, context, device_id)
    ask = LogRequest(request_id=new_request_id(), **body.model_dump())
    await run_in_threadpool(request_logs, context.engine, context.link, context.topics, device_id, ask)
    await run_in_threadpool(audit.record, who, "device.logs", device_id, body.model_dump(mode="json"))
    return LogTicket(request_id=ask.request_id, device_id=device_id, state="pending")


@router.get("/api/v1/devices/{device_id}/logs/{request_id}", response_model=LogAnswer)
def get_logs(
    device_id: DeviceIdPath,
    request_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{8,64}$")],
    context: Context,
    _who: Operator,
) -> LogAnswer:
    row, text = read_answer(context.engine, request_id)
    data: Any = row
    if data.device_id != device_id:
        raise NotFoundError(f"no log request {request_id} for device {device_id}")
    return LogAnswer(
        request_id=data.request_id,
        device_id=data.device_id,
        state=data.state,
        requested_at=remote.requested_at(data),
        completed_at=data.completed_at,
        request=data.request,
        lines=data.lines,
        truncated=data.truncated,
        error=data.error,
        text=text,
    )


@router.get("/api/v1/devices/{device_id}/config", response_model=DeviceConfig)
def get_device_config(device_id: DeviceIdPath, context: Context, _who: Viewer) -> DeviceConfig:
    with context.engine.begin() as conn:
        device = repository.get_device(conn, device_id)
        found = remote.config_for(conn, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id} was provisioned or has reported to this fleet")
    desired, source = found if found is not None else (None, None)
    report = device.config
    if desired is None:
        in_sync = report is None or report.applied_revision is None
    else:
        in_sync = report is not None and report.applied_revision == desired.revision
    return DeviceConfig(device_id=device_id, desired=desired, source=source, report=report, in_sync=in_sync)


def _put(context: FleetContext, target: str, body: ConfigBody | None) -> ConfigResult:
    config = checked(body.settings) if body is not None else None
    notified = set_config(context.engine, context.link, context.topics, target, config)
    return ConfigResult(target=target, config=config, devices_notified=notified)


@router.put("/api/v1/devices/{device_id}/config", response_model=ConfigResult)
async def put_device_config(
    device_id: DeviceIdPath, body: ConfigBody, context: Context, who: Operator, audit: Audit
) -> ConfigResult:
    """Set the device's own remote config (it overrides its group's); 400 names each bad key."""
    await run_in_threadpool(_known, context, device_id)
    result = await run_in_threadpool(_put, context, device_id, body)
    await run_in_threadpool(audit.record, who, "device.config", device_id, body.model_dump(mode="json"))
    return result


@router.delete("/api/v1/devices/{device_id}/config", response_model=ConfigResult)
async def delete_device_config(
    device_id: DeviceIdPath, context: Context, who: Operator, audit: Audit
) -> ConfigResult:
    """Drop the device's own remote config (its group's, if any, applies again)."""
    result = await run_in_threadpool(_put, context, device_id, None)
    await run_in_threadpool(audit.record, who, "device.config.clear", device_id)
    return result


@router.put("/api/v1/groups/{group}/config", response_model=ConfigResult)
async def put_group_config(
    group: GroupPath, body: ConfigBody, context: Context, who: Operator, audit: Audit
) -> ConfigResult:
    """Set the remote config of every device in ``group`` without one of its own (also later members)."""
    result = await run_in_threadpool(_put, context, group_target(group), body)
    await run_in_threadpool(audit.record, who, "group.config", group, body.model_dump(mode="json"))
    return result


@router.delete("/api/v1/groups/{group}/config", response_model=ConfigResult)
async def delete_group_config(
    group: GroupPath, context: Context, who: Operator, audit: Audit
) -> ConfigResult:
    result = await run_in_threadpool(_put, context, group_target(group), None)
    await run_in_threadpool(audit.record, who, "group.config.clear", group)
    return result
