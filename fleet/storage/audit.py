"""The audit log: one row per successful operator or device-lifecycle action; listed newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field
from sqlalchemy import Connection, insert, select

from fleet.storage.schema import audit_log
from fleet.storage.times import utc
from fleet.views import View


class AuditEntry(View):
    id: int
    at: datetime
    actor: str = Field(description="the operator token's name, or the device id")
    role: str | None = Field(description="viewer, operator, admin; device for a device; null when open")
    action: str = Field(description="e.g. model.upload, rollout.start, device.revoke")
    target: str | None = Field(description="what the action was applied to, e.g. 'digits 1.0.0', 'cam-1'")
    detail: dict[str, Any] | None
    client: str | None = Field(description="the caller's address as the fleet saw it")


def record_action(
    conn: Connection,
    *,
    at: datetime,
    actor: str,
    role: str | None,
    action: str,
    target: str | None,
    detail: dict[str, Any] | None,
    client: str | None,
) -> int:
    return int(
        conn.execute(
            insert(audit_log)
            .values(
                at=at,
                actor=actor[:64],
                role=role,
                action=action,
                target=target,
                detail=detail,
                client=client[:64] if client else None,
            )
            .returning(audit_log.c.id)
        ).scalar_one()
    )


def list_actions(
    conn: Connection,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Newest first; page on with ``before_id`` = the smallest id of the previous page."""
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if actor is not None:
        query = query.where(audit_log.c.actor == actor)
    if action is not None:
        query = query.where(audit_log.c.action == action)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    if before_id is not None:
        query = query.where(audit_log.c.id < before_id)
    return [
        AuditEntry(
            id=row.id,
            at=utc(row.at),
            actor=row.actor,
            role=row.role,
            action=row.action,
            target=row.target,
            detail=row.detail,
            client=row.client,
        )
        for row in conn.execute(query)
    ]
