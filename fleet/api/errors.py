"""Translate the fleet's exception tree to ``{"detail": "..."}`` responses, in one place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
from fleet.remote_logs import DeviceUnreachableError
from protocol.validation import describe_first_error, error_location

STATUS: dict[type[FleetError], int] = {
    AuthError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    InvalidBundleError: 400,
    TooLargeError: 413,
    StorageError: 503,
    DeviceUnreachableError: 503,
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


def _control_character(value: object) -> str | None:
    """The first control character (C0, DEL or C1) in a string input, as ``U+XXXX``."""
    if isinstance(value, str):
        for char in value:
            if ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
                return f"U+{ord(char):04X}"
    return None


def invalid_characters(errors: Sequence[Mapping[str, Any]]) -> str | None:
    """``where: ...`` for the first field refused because it holds a control character (NUL
    included), else None. No id, name, version or label may hold one: such a request is malformed
    (400), not merely off-schema (422), on every database."""
    for error in errors:
        found = _control_character(error.get("input"))
        if found is not None:
            where = error_location(error.get("loc", ()), "request")
            return f"{where}: contains the control character {found}, which no name, id or version may hold"
    return None


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    refused = invalid_characters(errors)
    if refused is not None:
        return JSONResponse({"detail": refused}, status_code=400)
    return JSONResponse({"detail": describe_first_error(errors, default="request")}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(FleetError, _fleet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
