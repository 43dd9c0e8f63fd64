"""``/api/v1/models``: upload, list, describe and download signed bundles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from fleet import uploads
from fleet.api.audit import Audit
from fleet.api.context import FleetContext, get_context
from fleet.api.ranges import RangeNotSatisfiable, parse_range
from fleet.api.security import Admin, DeviceOrViewer, Operator, Viewer
from fleet.auth import ForbiddenError
from fleet.errors import InvalidBundleError, NotFoundError
from fleet.names import ModelName, SemVer
from fleet.storage import repository
from fleet.views import ModelDetail, ModelInfo

router = APIRouter(prefix="/api/v1/models", tags=["models"])
Context = Annotated[FleetContext, Depends(get_context)]
CHUNK = 256 * 1024
Name = Annotated[ModelName, PathParam(description="model name: lower-case letters, digits, _ . -")]
Version = Annotated[SemVer, PathParam(description="semantic version, e.g. 1.2.0")]


@router.post("", status_code=201, response_model=ModelInfo, responses={200: {"model": ModelInfo}})
async def upload_model(request: Request, context: Context, who: Operator, audit: Audit) -> JSONResponse:
    """Body: the raw bundle file (``application/octet-stream``), streamed to disk and verified there.
    201 stored, 200 already stored."""
    artifacts = context.registry.artifacts
    declared = request.headers.get("content-length")
    upload = await uploads.receive(request.stream(), artifacts, context.max_bundle_bytes, declared)
    try:
        if not upload.size:
            raise InvalidBundleError(
                "the request body is empty: send the bundle file as application/octet-stream"
            )
        result = await run_in_threadpool(context.registry.upload, upload)
    finally:
        upload.path.unlink(missing_ok=True)
    info = result.model
    detail = {"sha256": info.sha256, "created": result.created}
    await run_in_threadpool(audit.record, who, "model.upload", f"{info.name} {info.version}", detail)
    return JSONResponse(result.model.model_dump(mode="json"), status_code=201 if result.created else 200)


@router.get("", response_model=list[ModelInfo])
def list_models(context: Context, _who: Viewer) -> list[ModelInfo]:
    with context.engine.begin() as conn:
        return repository.list_models(conn)


@router.get("/{name}/{version}", response_model=ModelDetail)
def get_model(name: Name, version: Version, context: Context, _who: Viewer) -> ModelDetail:
    with context.engine.begin() as conn:
        detail = repository.get_model_detail(conn, name, version)
    if detail is None:
        raise NotFoundError(f"no model {name} {version} in the registry")
    return detail


def _file_chunks(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


@router.get("/{name}/{version}/bundle", response_class=Response)
def download_bundle(
    name: Name, version: Version, request: Request, context: Context, who: DeviceOrViewer
) -> Response:
    """The bundle bytes; ``ETag`` is the quoted sha256; one ``Range`` (``bytes=a-b``, ``a-``, ``-n``).

    A device may fetch only the model its desired state names, or the one it runs (to restore it)."""
    if who.device_id is not None:
        with context.engine.begin() as conn:
            allowed = repository.models_allowed_for(conn, who.device_id)
        if (name, version) not in allowed:
            raise ForbiddenError(
                f"device {who.device_id} may download only the model it should run or runs; "
                f"{name} {version} is neither"
            )
    info, path = context.registry.bundle_path(name, version)
    etag = f'"{info.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes"}
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        range_header = None  # the client's partial copy is of other bytes: send them all
    try:
        wanted = parse_range(range_header, info.size)
    except RangeNotSatisfiable:
        return JSONResponse(
            {"detail": f"range {range_header!r} is outside the bundle's {info.size} bytes"},
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{info.size}"},
        )
    media = "application/octet-stream"
    if wanted is None:
        headers["Content-Length"] = str(info.size)
        return StreamingResponse(_file_chunks(path, 0, info.size), media_type=media, headers=headers)
    headers["Content-Range"] = wanted.content_range(info.size)
    headers["Content-Length"] = str(wanted.length)
    return StreamingResponse(
        _file_chunks(path, wanted.start, wanted.length), status_code=206, media_type=media, headers=headers
    )


@router.delete("/{name}/{version}", status_code=204)
def delete_model(name: Name, version: Version, context: Context, who: Admin, audit: Audit) -> None:
    """Remove a model and its bundle; refused (409) while any desired state or device uses it."""
    context.registry.delete(name, version)
    audit.record(who, "model.delete", f"{name} {version}")
