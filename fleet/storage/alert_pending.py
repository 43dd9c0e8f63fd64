"""The alert conditions whose hold time runs (``alert_pending``): written by the elected worker at
the end of each alert run, read at the start of the next, so a new leader continues a ``for_s`` or
``resolve_for_s`` hold where the previous one left it instead of starting it over."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select, tuple_

from fleet.storage.schema import alert_pending
from fleet.storage.times import utc

Key = tuple[str, str]
"""(rule, device id)"""


@dataclass(frozen=True)
class Holding:
    value: float | None
    pending_since: datetime | None
    clearing_since: datetime | None


def load(conn: Connection) -> dict[Key, Holding]:
    return {
        (row.rule, row.device_id): Holding(
            row.value,
            utc(row.pending_since) if row.pending_since is not None else None,
            utc(row.clearing_since) if row.clearing_since is not None else None,
        )
        for row in conn.execute(select(alert_pending))
    }


def save(conn: Connection, before: dict[Key, Holding], after: dict[Key, Holding]) -> None:
    """Make the table ``after``, given that it held ``before``: only changed rows are written."""
    stale = [key for key, held in before.items() if after.get(key) != held]
    if stale:
        conn.execute(
            delete(alert_pending).where(tuple_(alert_pending.c.rule, alert_pending.c.device_id).in_(stale))
        )
    fresh = [
        {
            "rule": rule,
            "device_id": device_id,
            "value": held.value,
            "pending_since": held.pending_since,
            "clearing_since": held.clearing_since,
        }
        for (rule, device_id), held in after.items()
        if before.get((rule, device_id)) != held
    ]
    if fresh:
        conn.execute(insert(alert_pending), fresh)
