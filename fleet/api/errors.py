"""Translate the fleet's exception tree to ``{"detail": "..."}`` responses, in one place."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fleet.errors import (
    ConflictError,
    FleetError,
    InvalidBundleError,
    NotFoundError,
    StorageError,
    TooLargeError,
)

STATUS = {
    NotFoundError: 404,
    ConflictError: 409,
    InvalidBundleError: 400,
    TooLargeError: 413,
    StorageError: 503,
}


def status_for(exc: FleetError) -> int:
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return status
    return 400


async def _fleet_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetError)
    return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return JSONResponse({"detail": "invalid request"}, status_code=422)
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "request"
    return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(FleetError, _fleet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
