"""The audit trail: handlers record each successful action through the ``Audit`` dependency, and
``GET /api/v1/audit`` lists them (operator or admin)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from fleet.api.context import FleetContext, get_context
from fleet.api.security import Operator
from fleet.auth import Principal
from fleet.names import DB_INT_MAX
from fleet.storage.audit import AuditEntry, list_actions, record_action
from fleet.storage.times import now, utc

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["system"])
Context = Annotated[FleetContext, Depends(get_context)]
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
"""No control characters (PostgreSQL refuses a NUL in text): refused at the edge, never a 500."""


def role_of(who: Principal) -> str | None:
    if who.device_id is not None:
        return "device"
    return who.role.name.lower() if who.role is not None else None


@dataclass(frozen=True)
class AuditTrail:
    """Bound to one request: knows the database and the caller's address."""

    context: FleetContext
    client: str | None

    def record(
        self, who: Principal, action: str, target: str | None, detail: dict[str, Any] | None = None
    ) -> None:
        """Call after the action succeeded. A failure to write is logged with the whole entry and not
        raised: the action itself is done, and a 500 would invite the operator to repeat it."""
        role = role_of(who)
        try:
            with self.context.engine.begin() as conn:
                record_action(
                    conn,
                    at=now(),
                    actor=who.name,
                    role=role,
                    action=action,
                    target=target,
                    detail=detail,
                    client=self.client,
                )
        except Exception:
            log.exception(
                "could not write the audit entry: %s (%s) %s %s from %s",
                who.name,
                role,
                action,
                target,
                self.client,
            )


def audit_trail(request: Request, context: Context) -> AuditTrail:
    return AuditTrail(context, request.client.host if request.client else None)


Audit = Annotated[AuditTrail, Depends(audit_trail)]


@router.get("/audit", response_model=list[AuditEntry])
def get_audit(
    context: Context,
    _who: Operator,
    actor: Annotated[
        str | None, Query(max_length=64, pattern=NO_CONTROL, description="only this token name or device")
    ] = None,
    action: Annotated[
        str | None, Query(pattern=r"^[a-z_.]{1,64}$", description="only this action, e.g. deploy")
    ] = None,
    since: Annotated[datetime | None, Query(description="at or after this time (ISO 8601)")] = None,
    before: Annotated[
        int | None, Query(ge=1, le=DB_INT_MAX, description="page on: ids below the last page's smallest")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="newest first, at most this many")] = 100,
) -> list[AuditEntry]:
    """Who did what to which target, when and from where; newest first (operator or admin)."""
    with context.engine.begin() as conn:
        return list_actions(
            conn,
            actor=actor,
            action=action,
            since=utc(since) if since is not None else None,
            before_id=before,
            limit=limit,
        )
