"""How far the alert loop has judged the telemetry windows (``alert_cursor``): the id of the last
window judged and when that window was received, one row, written in the alert run's own (fenced)
transaction. A new leader continues after the window the previous one committed, so the windows
that arrived between its last run and the takeover are judged; a stale leader's refused run rolls
its move back with everything else. Which windows a run judges from it: ``alert_windows``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Column, Connection, DateTime, String, Table, select

from fleet.storage.schema import metadata, telemetry
from fleet.storage.times import utc

TELEMETRY = "telemetry"
"""The one cursor's name (a key, so another stream's cursor can join the table later)."""

alert_cursor = Table(
    "alert_cursor",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("window_id", BigInteger, nullable=False),  # the last telemetry id judged
    Column("received_at", DateTime(timezone=True), nullable=True),  # that window's: tells reused ids
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Cursor:
    window_id: int
    received_at: datetime | None
    """When the window ``window_id`` was received (None: no window yet, ``window_id`` 0)."""


def load(conn: Connection) -> Cursor | None:
    """Where the last run stopped; None before the first run."""
    query = select(alert_cursor.c.window_id, alert_cursor.c.received_at).where(
        alert_cursor.c.name == TELEMETRY
    )
    found = conn.execute(query).first()
    if found is None:
        return None
    received = utc(found.received_at) if found.received_at is not None else None
    return Cursor(int(found.window_id), received)


def received_at(conn: Connection, window_id: int) -> datetime | None:
    found = conn.execute(select(telemetry.c.received_at).where(telemetry.c.id == window_id)).scalar()
    return utc(found) if found is not None else None


def save(conn: Connection, window_id: int, now: datetime) -> None:
    """Store the cursor (an upsert: two unfenced first runs must not fail on each other's row)."""
    changes = {"window_id": window_id, "received_at": received_at(conn, window_id), "updated_at": now}
    row = {"name": TELEMETRY, **changes}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(alert_cursor).values(**row)
        conn.execute(pg.on_conflict_do_update(index_elements=["name"], set_=changes))
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(alert_cursor).values(**row)
        conn.execute(lite.on_conflict_do_update(index_elements=["name"], set_=changes))
