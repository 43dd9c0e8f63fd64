"""Translate the fleet's exception tree to ``{"detail": "..."}`` responses, in one place."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fleet.auth import AuthError, ForbiddenError
from fleet.errors import (
    ConflictError,
    FleetError,
    InvalidBundleError,
    NotFoundError,
    StorageError,
    TooLargeError,
)
from protocol.validation import describe_first_error

STATUS: dict[type[FleetError], int] = {
    AuthError: 401,
    ForbiddenError: 403,
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
    status = status_for(exc)
    headers = {"WWW-Authenticate": 'Bearer realm="edgefleet"'} if status == 401 else None
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": describe_first_error(exc.errors(), default="request")}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(FleetError, _fleet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
