"""``/api/v1/devices/{id}``: revoke, rotate-secret and delete a device identity (admin).

Each change reaches HTTP auth at once (the database) and the broker through its password file:
rewritten and reloaded by the fleet when it keeps the file, else described in ``broker``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from fleet.api.audit import Audit
from fleet.api.context import FleetContext, get_context
from fleet.api.security import Admin
from fleet.auth import hash_secret, new_secret
from fleet.broker_files import BrokerChange, manual_change
from fleet.errors import ConflictError, NotFoundError
from fleet.names import DeviceId
from fleet.provision import IdentityChange, SecretRotated
from fleet.storage import repository

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
Context = Annotated[FleetContext, Depends(get_context)]
DeviceIdPath = Annotated[DeviceId, Path(description="letters, digits, _ . -; at most 64")]


def _broker(context: FleetContext, device_id: str, line: str | None, replaces: bool) -> BrokerChange:
    if context.password_file is None:
        return manual_change(device_id, line, replaces)
    return context.password_file.apply(device_id, line)


@router.post("/{device_id}/revoke", response_model=IdentityChange)
def revoke_device(device_id: DeviceIdPath, context: Context, who: Admin, audit: Audit) -> IdentityChange:
    """Revoke a provisioned device: its HTTP calls are refused at once (403), and its broker login
    once the password file lost its line (applied here when the fleet keeps that file)."""
    with context.engine.begin() as conn:
        if repository.device_credentials(conn, device_id) is None:
            raise NotFoundError(f"device {device_id} was never provisioned: there is nothing to revoke")
        repository.revoke_device(conn, device_id, repository.now())
        broker = _broker(context, device_id, None, replaces=False)
    audit.record(who, "device.revoke", device_id)
    return IdentityChange(device_id=device_id, state="revoked", broker=broker)


@router.post("/{device_id}/rotate-secret", response_model=SecretRotated)
def rotate_secret(device_id: DeviceIdPath, context: Context, who: Admin, audit: Audit) -> SecretRotated:
    """A new secret, returned once; the old one stops opening the API at once."""
    secret = new_secret()
    hashed = hash_secret(secret)
    line = f"{device_id}:{hashed}"
    with context.engine.begin() as conn:
        credentials = repository.device_credentials(conn, device_id)
        if credentials is None:
            raise NotFoundError(f"device {device_id} was never provisioned: add it instead")
        if credentials.revoked:
            raise ConflictError(f"device {device_id} is revoked: delete it and add it again")
        repository.set_secret(conn, device_id, hashed)
        broker = _broker(context, device_id, line, replaces=True)
    audit.record(who, "device.rotate_secret", device_id)
    return SecretRotated(device_id=device_id, secret=secret, password_file_line=line, broker=broker)


@router.delete("/{device_id}", response_model=IdentityChange)
def delete_device(device_id: DeviceIdPath, context: Context, who: Admin, audit: Audit) -> IdentityChange:
    """Forget a device: identity, labels, status, own assignment, telemetry and events."""
    with context.engine.begin() as conn:
        if not repository.delete_device(conn, device_id):
            raise NotFoundError(f"the fleet knows no device {device_id}")
        broker = _broker(context, device_id, None, replaces=False)
    audit.record(who, "device.delete", device_id)
    return IdentityChange(device_id=device_id, state="deleted", broker=broker)
