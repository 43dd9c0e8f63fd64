"""The OpenAPI document, made to match what the app really answers, in one place.

FastAPI declares a 422 body (``HTTPValidationError``) that ``fleet.api.errors`` never sends and
knows nothing of the fleet's own errors. ``install`` wraps ``app.openapi`` so that the document:

- declares every error status an operation can answer with one body, ``ErrorBody``
  (``{"detail": "..."}``), the one ``fleet.api.errors`` sends;
- derives 401 and 403 from the route's authentication dependency (a viewer token cannot lack a
  role, so viewer routes have no 403), and takes the statuses a handler raises itself from
  ``ERRORS``, one row per operation;
- describes what FastAPI cannot see: the raw upload body, the bundle's bytes and ranges, the
  Prometheus text.

Building the document fails when a route has no row in ``ERRORS``, when a row names no route, or
when a route uses an authentication dependency this module does not know: a new route cannot be
left undocumented by accident. ``tests/fleet/test_openapi_fuzz.py`` checks the result against
the running app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, get_args

import fastapi.routing
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.params import Depends
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from fleet.api import security

__all__ = ["ERRORS", "ContractError", "ErrorBody", "install", "operations"]


class ErrorBody(BaseModel):
    """Every error the API answers (4xx and 503), whatever raised it."""

    model_config = ConfigDict(extra="forbid", title="ErrorBody")
    detail: str = Field(
        description="one line naming the problem; for 422 ``<where>: <message>``, e.g. "
        "``path.device_id: String should match pattern ...``"
    )


class ContractError(Exception):
    """The routes and this module's tables disagree: a programming error, found when the document
    is first built (in the tests at the latest)."""


REASONS: dict[int, str] = {
    400: "refused: a check failed (the detail names it), the body could not be parsed, or a "
    "parameter or body field holds a control character (NUL included; the detail names the field)",
    401: "no valid credentials: send an operator token (or a device's HTTP Basic pair where accepted)",
    403: "valid credentials without the role (or a device asking for what is not its own)",
    404: "no such record",
    409: "conflicts with what is stored, or with the state the record is in",
    413: "the upload is over the fleet's size limit",
    416: "the range starts past the end of the bundle",
    422: "a parameter or the body does not match its schema; the detail names the first problem",
    503: "the database, the artifacts directory or the broker's password file cannot be used, or "
    "the fleet is not connected to the broker (a log request)",
}

ERRORS: dict[str, tuple[int, ...]] = {
    "GET /api/v1/health": (),
    "GET /api/v1/stats": (),
    "GET /api/v1/cluster": (),
    "GET /api/v1/dead-letters": (),
    "GET /api/v1/alerts": (),
    "GET /api/v1/audit": (),
    "GET /api/v1/summary": (),
    "GET /api/v1/labels": (),
    "GET /api/v1/whoami": (),
    "GET /metrics": (),
    "POST /api/v1/models": (400, 409, 413, 503),
    "GET /api/v1/models": (),
    "GET /api/v1/models/{name}/{version}": (404,),
    "DELETE /api/v1/models/{name}/{version}": (404, 409),
    "GET /api/v1/models/{name}/{version}/bundle": (404, 416, 503),
    "POST /api/v1/models/{name}/{version}/rollback-grants": (400, 404),
    "POST /api/v1/deployments": (404, 409),
    "GET /api/v1/devices": (400,),
    "POST /api/v1/devices": (409, 503),
    "DELETE /api/v1/devices/{device_id}": (404, 503),
    "POST /api/v1/devices/{device_id}/revoke": (404, 503),
    "POST /api/v1/devices/{device_id}/rotate-secret": (404, 409, 503),
    "PATCH /api/v1/devices/{device_id}": (),
    "GET /api/v1/devices/{device_id}": (404,),
    "GET /api/v1/devices/{device_id}/desired": (),
    "DELETE /api/v1/devices/{device_id}/desired": (404,),
    "GET /api/v1/devices/{device_id}/telemetry": (),
    "GET /api/v1/devices/{device_id}/series": (),
    "GET /api/v1/devices/{device_id}/events": (),
    "POST /api/v1/devices/{device_id}/logs": (404, 503),
    "GET /api/v1/devices/{device_id}/logs/{request_id}": (404,),
    "GET /api/v1/devices/{device_id}/config": (404,),
    "PUT /api/v1/devices/{device_id}/config": (400, 404),
    "DELETE /api/v1/devices/{device_id}/config": (),
    "PUT /api/v1/groups/{group}/config": (400,),
    "DELETE /api/v1/groups/{group}/config": (),
    "POST /api/v1/rollouts": (400, 404, 409),
    "GET /api/v1/rollouts": (),
    "GET /api/v1/rollouts/{rollout_id}": (404,),
    "GET /api/v1/rollouts/{rollout_id}/devices": (404,),
    "POST /api/v1/rollouts/{rollout_id}/pause": (404, 409),
    "POST /api/v1/rollouts/{rollout_id}/resume": (404, 409),
    "POST /api/v1/rollouts/{rollout_id}/abort": (404, 409),
    "POST /api/v1/rollouts/{rollout_id}/rollback": (404, 409),
    "POST /api/v1/capture": (400, 409, 413, 503),
    "GET /api/v1/capture": (),
    "GET /api/v1/capture/{name}/{version}/export": (400, 404),
    "GET /api/v1/devices/{device_id}/capture": (),
    "PUT /api/v1/devices/{device_id}/capture": (),
    "DELETE /api/v1/devices/{device_id}/capture": (404,),
    "PUT /api/v1/groups/{group}/capture": (),
    "DELETE /api/v1/groups/{group}/capture": (404,),
}
"""What each operation's handler (not its authentication, not request validation) can answer
besides success: ``fleet.api.errors.STATUS`` maps the raised ``FleetError`` to these."""


def _dependency_of(annotated: object) -> Callable[..., Any]:
    for meta in get_args(annotated)[1:]:
        if isinstance(meta, Depends) and meta.dependency is not None:
            return meta.dependency
    raise ContractError(f"{annotated!r} carries no dependency")


def _auth_statuses() -> dict[Callable[..., Any], tuple[int, ...]]:
    """What each authentication dependency can answer: a viewer token always has the viewer role;
    a device's HTTP Basic user name that is not a device id is 400 before any query."""
    return {
        _dependency_of(security.Viewer): (401,),
        _dependency_of(security.Operator): (401, 403),
        _dependency_of(security.Admin): (401, 403),
        _dependency_of(security.DeviceOrViewer): (400, 401, 403),
    }


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """The documented routes, each with its full ``path_format``, ``methods`` and ``dependant``
    (FastAPI 0.150 and later keep included routers nested: ``iter_route_contexts`` flattens them)."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: Iterable[Any] = flatten(app.routes) if flatten is not None else app.routes
    for route in routes:
        original = getattr(route, "original_route", route)
        if isinstance(original, APIRoute) and route.include_in_schema:
            yield route


def _key(method: str, path: str) -> str:
    return f"{method.upper()} {path}"


def operations(app: FastAPI) -> dict[str, tuple[int, ...]]:
    """Every documented operation (``"METHOD /path"``) with the error statuses it declares, from
    the routes and ``ERRORS``; raises ``ContractError`` where they disagree."""
    known = _auth_statuses()
    declared: dict[str, tuple[int, ...]] = {}
    for route in _api_routes(app):
        auth = {status for call in _calls(route.dependant) for status in known.get(call, ())}
        secured = any(call in known for call in _calls(route.dependant))
        if _uses_security(route.dependant) and not secured:
            raise ContractError(
                f"{route.path_format}: an authentication dependency this module does not know"
            )
        for method in sorted(route.methods):
            key = _key(method, route.path_format)
            if key not in ERRORS:
                raise ContractError(f"{key} has no row in fleet.api.openapi.ERRORS: list what it can answer")
            declared[key] = tuple(sorted(auth | set(ERRORS[key])))
    stale = set(ERRORS) - set(declared)
    if stale:
        raise ContractError(f"fleet.api.openapi.ERRORS names operations the app lacks: {sorted(stale)}")
    return declared


def _uses_security(dependant: Dependant) -> bool:
    """Whether a security scheme (``HTTPBearer``, ``HTTPBasic``) is anywhere in the tree."""
    return any(call in (security.bearer, security.basic) for call in _calls(dependant))


_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "the scheme to authenticate with",
        "required": True,
        "schema": {"type": "string"},
    }
}


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": REASONS[status],
        "content": {"application/json": {"schema": _ERROR_REF}},
    }
    if status == 401:
        response["headers"] = _WWW_AUTHENTICATE
    return response


def _bundle_download(operation: dict[str, Any]) -> None:
    ranged = {"Content-Range": {"description": "bytes FIRST-LAST/SIZE", "schema": {"type": "string"}}}
    etag = {"ETag": {"description": "the bundle's sha256, quoted", "schema": {"type": "string"}}}
    operation["responses"]["200"] = {
        "description": "the whole bundle",
        "headers": etag,
        "content": {"application/octet-stream": _BINARY},
    }
    operation["responses"]["206"] = {
        "description": "the one range asked for with ``Range``",
        "headers": {**etag, **ranged},
        "content": {"application/octet-stream": _BINARY},
    }
    operation["responses"]["304"] = {"description": "``If-None-Match`` names the bundle's ETag"}
    operation["responses"].setdefault("416", {})["headers"] = ranged


def _upload(operation: dict[str, Any]) -> None:
    operation["requestBody"] = {
        "required": True,
        "description": "the signed bundle file, streamed",
        "content": {"application/octet-stream": _BINARY},
    }


def _metrics(operation: dict[str, Any]) -> None:
    operation["responses"]["200"] = {
        "description": "Prometheus text exposition format 0.0.4",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }


def _capture_upload(operation: dict[str, Any]) -> None:
    operation["requestBody"] = {
        "required": True,
        "description": "a CaptureBatch as JSON, plain or with Content-Encoding: gzip",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


def _capture_export(operation: dict[str, Any]) -> None:
    operation["responses"]["200"] = {
        "description": "the samples: an .npz archive (x or x_0, x_1, ...; predicted, reason, device, "
        "captured_at), or CSV with a header row",
        "content": {"application/octet-stream": _BINARY, "text/csv": {"schema": {"type": "string"}}},
    }


FRAGMENTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "POST /api/v1/capture": _capture_upload,
    "GET /api/v1/capture/{name}/{version}/export": _capture_export,
    "POST /api/v1/models": _upload,
    "GET /api/v1/models/{name}/{version}/bundle": _bundle_download,
    "GET /metrics": _metrics,
}
"""What FastAPI cannot infer because the handler reads the request or writes the response itself;
applied after the error responses."""


def _rewrite(document: dict[str, Any], declared: dict[str, tuple[int, ...]]) -> None:
    for path, methods in document.get("paths", {}).items():
        for method, operation in methods.items():
            key = _key(method, path)
            responses = operation.setdefault("responses", {})
            statuses = set(declared.get(key, ()))
            if "422" in responses:
                statuses |= {400, 422}  # a control character in a parameter or field is a 400
            if "requestBody" in operation:
                statuses.add(400)  # a body that is not UTF-8 JSON: FastAPI's own 400, same body
            for status in sorted(statuses):
                responses[str(status)] = _error_response(status)
            if key in FRAGMENTS:
                FRAGMENTS[key](operation)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``GET /api/openapi.json``) return the rewritten document."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        generated = generate()  # FastAPI's own, cached until the routes change
        if "ErrorBody" not in generated.get("components", {}).get("schemas", {}):
            _rewrite(generated, operations(app))
        return generated

    app.openapi = document  # type: ignore[method-assign]
