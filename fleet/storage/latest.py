"""Each device's newest telemetry window in ``device_latest``, kept in the transaction that stores
the window, so the device list reads one small row per device instead of the telemetry table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection

from fleet.storage.metrics import METRIC_NAMES
from fleet.storage.schema import device_latest

LATEST_COLUMNS = ("device_id", "telemetry_id", "window_end", *METRIC_NAMES)


def newest_per_device(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Of stored telemetry rows (each with its ``telemetry_id``), the newest per device."""
    newest: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        kept = newest.get(row["device_id"])
        if kept is None or row["telemetry_id"] > kept["telemetry_id"]:
            newest[row["device_id"]] = row
    return [{name: row[name] for name in LATEST_COLUMNS} for _, row in sorted(newest.items())]


def upsert_latest(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Make each row its device's latest window unless a newer one (a higher telemetry id: stored
    later, by this worker or another) is already there. One statement for the whole batch."""
    values = newest_per_device(rows)
    if not values:
        return
    insert: Any
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(device_latest)
    replaced = {name: statement.excluded[name] for name in LATEST_COLUMNS if name != "device_id"}
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["device_id"],
            set_=replaced,
            where=device_latest.c.telemetry_id < statement.excluded.telemetry_id,
        ),
        values,
    )
