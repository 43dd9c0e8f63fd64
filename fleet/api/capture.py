"""Data capture: devices upload samples, operators count and export them and set the policy.

``POST /api/v1/capture``                          a device's batch (gzip or plain JSON), stored once per uid
``GET  /api/v1/capture``                          samples per model version and reason; drops per device
``GET  /api/v1/capture/{name}/{version}/export``  ``.npz`` (or ``?format=csv``) for ``edgefleet convert``
``PUT|DELETE|GET /api/v1/devices/{id}/capture``   a device's capture policy (delivered in its desired state)
``PUT|DELETE /api/v1/groups/{group}/capture``     a group's (a device's own policy wins)
"""

from __future__ import annotations

import zlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from fleet.api.audit import Audit
from fleet.api.context import FleetContext, get_context
from fleet.api.security import DeviceOrViewer, Operator, Viewer
from fleet.auth import ForbiddenError
from fleet.capture_export import export_csv, export_npz
from fleet.errors import ConflictError, FleetError, NotFoundError, TooLargeError
from fleet.names import DeviceId, Label, ModelName, SemVer
from fleet.storage import capture as store
from fleet.storage import repository
from protocol.capture import CaptureBatch, CapturePolicy, CaptureReceipt
from protocol.manifest import Manifest
from protocol.validation import describe_first_error

router = APIRouter(prefix="/api/v1", tags=["capture"])
Context = Annotated[FleetContext, Depends(get_context)]
DeviceIdPath = Annotated[DeviceId, Path(description="letters, digits, _ . -; at most 64")]
GroupPath = Annotated[Label, Path(description="a device group: letters, digits, _ . : -")]
Name = Annotated[ModelName, Path(description="model name")]
Version = Annotated[SemVer, Path(description="semantic version, e.g. 1.2.0")]

MAX_UPLOAD_BYTES = 16 * 1024 * 1024
"""Largest capture upload, compressed or not, and largest once decompressed."""


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise TooLargeError(
            f"the capture upload is {declared} bytes; the fleet accepts at most {MAX_UPLOAD_BYTES}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise TooLargeError(f"the capture upload passed {MAX_UPLOAD_BYTES} bytes, the fleet's limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "identity").lower() != "gzip":
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(body, MAX_UPLOAD_BYTES + 1)
    except zlib.error as exc:
        raise FleetError(f"the capture upload is not valid gzip: {exc}") from None
    if len(plain) > MAX_UPLOAD_BYTES or inflater.unconsumed_tail:
        raise TooLargeError(
            f"the capture upload unpacks to more than {MAX_UPLOAD_BYTES} bytes, the fleet's limit"
        )
    if not inflater.eof:
        raise FleetError("the capture upload is not valid gzip: it ends early")
    return plain


@router.post("/capture", response_model=CaptureReceipt)
async def upload_capture(request: Request, context: Context, who: DeviceOrViewer) -> CaptureReceipt:
    """Body: a ``CaptureBatch`` as JSON (``Content-Encoding: gzip`` accepted). Only the device
    named in the batch may send it. Samples already stored (by uid) are counted, not stored again."""
    body = await _body(request)
    try:
        batch = CaptureBatch.model_validate_json(body)
    except ValidationError as exc:
        raise FleetError(f"not a valid capture batch: {describe_first_error(exc, default='body')}") from None
    if context.tokens and who.device_id != batch.device_id:
        raise ForbiddenError(
            f"{who.name} may not upload samples of device {batch.device_id}: a device uploads its own"
        )

    def save() -> CaptureReceipt:
        try:
            with context.engine.begin() as conn:
                return store.store_capture(conn, batch, repository.now())
        except IntegrityError:
            raise ConflictError(
                "another upload of the same samples was stored meanwhile; send it again"
            ) from None

    return await run_in_threadpool(save)


@router.get("/capture")
def capture_summary(context: Context, _who: Viewer) -> dict[str, Any]:
    """Samples per model version (by reason), samples each device dropped, and the policies set."""
    with context.engine.begin() as conn:
        return {
            "models": store.capture_counts(conn),
            "dropped": store.dropped_by_device(conn),
            "policies": store.list_policies(conn),
        }


@router.get("/capture/{name}/{version}/export")
def export_capture(
    name: Name,
    version: Version,
    context: Context,
    _who: Viewer,
    format: Annotated[
        Literal["npz", "csv"], Query(description="npz (any model) or csv (one 1-D input)")
    ] = "npz",
) -> Response:
    """The version's samples as ``edgefleet convert --calibration`` takes them (``fleet.capture_export``)."""
    with context.engine.begin() as conn:
        detail = repository.get_model_detail(conn, name, version)
        names, primary = None, None
        if detail is not None:
            manifest = Manifest.model_validate(detail.manifest)
            names = [spec.name for spec in manifest.inputs]
            primary = manifest.outputs[manifest.primary_output_index].name
        samples = store.iter_samples(conn, name, version)
        export = (export_csv if format == "csv" else export_npz)(samples, names, primary)
    media = "text/csv" if format == "csv" else "application/octet-stream"
    headers = {
        "Content-Disposition": f'attachment; filename="{name}-{version}-capture.{format}"',
        "X-Samples": str(export.samples),
        "X-Skipped-Quantized": str(export.skipped_quantized),
    }
    return Response(export.data, media_type=media, headers=headers)


# -- policies -------------------------------------------------------------------------------------
@router.get("/devices/{device_id}/capture", response_model=CapturePolicy | None)
def get_device_capture(device_id: DeviceIdPath, context: Context, _who: Viewer) -> CapturePolicy | None:
    """The policy the device's desired state carries (its own, else its group's); null: none."""
    with context.engine.begin() as conn:
        return store.policy_for(conn, device_id)


def _set(context: FleetContext, target: str, policy: CapturePolicy) -> None:
    with context.engine.begin() as conn:
        store.set_policy(conn, target, policy, repository.now())


def _clear(context: FleetContext, target: str) -> None:
    with context.engine.begin() as conn:
        if not store.clear_policy(conn, target):
            raise NotFoundError(f"no capture policy is set for {target}")


@router.put("/devices/{device_id}/capture", response_model=CapturePolicy)
def put_device_capture(
    device_id: DeviceIdPath, body: CapturePolicy, context: Context, who: Operator, audit: Audit
) -> CapturePolicy:
    """Set the device's capture policy; the device applies it at its next desired-state check."""
    _set(context, f"device:{device_id}", body)
    audit.record(who, "capture.set", f"device:{device_id}", body.model_dump(mode="json"))
    return body


@router.delete("/devices/{device_id}/capture", status_code=204)
def delete_device_capture(device_id: DeviceIdPath, context: Context, who: Operator, audit: Audit) -> None:
    _clear(context, f"device:{device_id}")
    audit.record(who, "capture.clear", f"device:{device_id}")


@router.put("/groups/{group}/capture", response_model=CapturePolicy)
def put_group_capture(
    group: GroupPath, body: CapturePolicy, context: Context, who: Operator, audit: Audit
) -> CapturePolicy:
    """Set the capture policy of every device in the group (a device's own policy wins)."""
    _set(context, f"group:{group}", body)
    audit.record(who, "capture.set", f"group:{group}", body.model_dump(mode="json"))
    return body


@router.delete("/groups/{group}/capture", status_code=204)
def delete_group_capture(group: GroupPath, context: Context, who: Operator, audit: Audit) -> None:
    _clear(context, f"group:{group}")
    audit.record(who, "capture.clear", f"group:{group}")
