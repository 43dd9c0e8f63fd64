"""Does a valid message fit the columns it goes into? Checked per message before a batch is written,
so one value the database would refuse (an integer of 2^63 or more, a NUL character on PostgreSQL,
a string longer than its column, a NaN in a NOT NULL column) is dead-lettered with its reason
instead of failing the batch it came in. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, String, Table

from fleet.storage.ingest import event_row, status_values, telemetry_row
from fleet.storage.schema import devices, events, telemetry
from protocol.messages import DeviceStatus, TelemetryWindow, UpdateEvent

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _text_problem(column: str, value: str, kind: Any) -> str | None:
    if "\x00" in value:
        return f"{column} contains a NUL character"
    if isinstance(kind, String) and kind.length is not None and len(value) > kind.length:
        return f"{column} is {len(value)} characters long; the column holds {kind.length}"
    return None


def _value_problem(table: Table, column: str, value: Any) -> str | None:
    kind = table.c[column].type
    if value is None:
        return None if table.c[column].nullable else f"{column} is missing (or NaN)"
    if isinstance(value, str):
        return _text_problem(column, value, kind)
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and isinstance(kind, Integer) and not INT64_MIN <= value <= INT64_MAX:
        return f"{column} = {value} does not fit a 64-bit integer column"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{column} = {value} is not a finite number"
    return None


def _row_problem(table: Table, row: Mapping[str, Any]) -> str | None:
    for column, value in row.items():
        if column == "payload":
            continue  # JSON text: valid by construction, stored as received
        problem = _value_problem(table, column, value)
        if problem is not None:
            return problem
    return None


def unfit(message: DeviceStatus | TelemetryWindow | UpdateEvent) -> str | None:
    """Why ``message`` cannot be stored as it is, or None when every value fits its column."""
    if isinstance(message, TelemetryWindow):
        return _row_problem(telemetry, telemetry_row(message, _EPOCH, b""))
    if isinstance(message, UpdateEvent):
        return _row_problem(events, event_row(message, _EPOCH))
    return _row_problem(devices, status_values(message, _EPOCH))
