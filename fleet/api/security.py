"""Request authentication as FastAPI dependencies: ``Viewer``, ``Operator``, ``Admin``, ``DeviceOrViewer``.

With no operator tokens configured the API is open (a warning is logged at start); otherwise every
``/api/v1`` route except ``/health`` needs credentials: 401 without valid ones, 403 without the role.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from fleet.api.context import FleetContext, get_context
from fleet.auth import AuthError, ForbiddenError, Principal, Role, find_token, verify_secret
from fleet.errors import FleetError
from fleet.storage import repository
from protocol.schema import DEVICE_ID_RE

bearer = HTTPBearer(auto_error=False, description="an operator token (roles: viewer, operator, admin)")
basic = HTTPBasic(auto_error=False, description="a device: its id and the secret from `edgefleet device add`")
OPEN = Principal(name="anonymous", role=Role.ADMIN)


def _operator(context: FleetContext, credentials: HTTPAuthorizationCredentials | None) -> Principal | None:
    if credentials is None:
        return None
    token = find_token(context.tokens, credentials.credentials)
    if token is None:
        raise AuthError("the token is not valid here")
    return Principal(name=token.name, role=token.role)


def require(role: Role) -> object:
    def dependency(
        context: Annotated[FleetContext, Depends(get_context)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        if not context.tokens:
            return OPEN
        principal = _operator(context, credentials)
        if principal is None:
            raise AuthError("this needs an operator token: send 'Authorization: Bearer <token>'")
        assert principal.role is not None
        if principal.role < role:
            raise ForbiddenError(
                f"{principal.name} is a {principal.role.name.lower()}; this needs {role.name.lower()}"
            )
        return principal

    return Depends(dependency)


Viewer = Annotated[Principal, require(Role.VIEWER)]
Operator = Annotated[Principal, require(Role.OPERATOR)]
Admin = Annotated[Principal, require(Role.ADMIN)]


async def device_or_viewer(
    request: Request,
    context: Annotated[FleetContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    device: Annotated[HTTPBasicCredentials | None, Depends(basic)],
) -> Principal:
    """A device (HTTP Basic; only its own desired state) or any operator token."""
    if not context.tokens:
        return OPEN
    if device is not None:
        if not DEVICE_ID_RE.fullmatch(device.username):
            # Checked before any query: a NUL or an over-long name never reaches the database.
            raise FleetError(
                "the HTTP Basic user name is not a device id (letters, digits, _ . -; at most 64)"
            )

        def check(username: str, password: str) -> bool | None:
            """True: a good secret; False: a good secret of a revoked device; None: refused."""
            with context.engine.begin() as conn:
                found = repository.device_credentials(conn, username)
            if found is None or not verify_secret(password, found.secret_hash):
                return None
            return not found.revoked

        ok = await run_in_threadpool(check, device.username, device.password)
        if ok is None:
            raise AuthError(f"wrong secret for device {device.username!r}, or it was never provisioned")
        if not ok:
            raise ForbiddenError(f"device {device.username} was revoked: it may not use this fleet")
        wanted = request.path_params.get("device_id")
        if wanted is not None and wanted != device.username:
            raise ForbiddenError(f"device {device.username} may only read its own desired state")
        return Principal(name=device.username, role=None, device_id=device.username)
    principal = _operator(context, credentials)
    if principal is None:
        raise AuthError("send a device's HTTP Basic credentials or an operator token")
    return principal


DeviceOrViewer = Annotated[Principal, Depends(device_or_viewer)]
