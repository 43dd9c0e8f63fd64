"""Does a valid message fit the columns it goes into? Checked per message before a batch is written,
so one value the database would refuse (an integer of 2^63 or more, a NUL character on PostgreSQL,
a string longer than its column, a NaN in a NOT NULL column) is dead-lettered with its reason
instead of failing the batch it came in. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, String, Table

from fleet.storage.ingest import event_row, status_values
from fleet.storage.schema import devices, events, telemetry
from fleet.storage.window_rows import WINDOW_COLUMNS
from protocol.messages import DeviceStatus, UpdateEvent

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Column:
    """What a column accepts, read from the schema once (a lookup in ``Table.c`` per value cost more
    than the check itself)."""

    name: str
    nullable: bool
    integer: bool
    length: int | None


def _columns(table: Table) -> dict[str, _Column]:
    return {
        column.name: _Column(
            column.name,
            bool(column.nullable),
            isinstance(column.type, Integer),
            column.type.length if isinstance(column.type, String) else None,
        )
        for column in table.columns
    }


_TABLES = {table.name: _columns(table) for table in (telemetry, events, devices)}
_WINDOW = tuple(_TABLES["telemetry"][name] for name in WINDOW_COLUMNS if name != "payload")
"""The checked columns of a window row; its payload (JSON text, valid by construction) is last."""


def _value_problem(column: _Column, value: Any) -> str | None:
    if value is None:
        return None if column.nullable else f"{column.name} is missing (or NaN)"
    kind = type(value)
    if kind is float:
        return None if math.isfinite(value) else f"{column.name} = {value} is not a finite number"
    if kind is int:
        if column.integer and not INT64_MIN <= value <= INT64_MAX:
            return f"{column.name} = {value} does not fit a 64-bit integer column"
        return None
    return _text_problem(column, value) if isinstance(value, str) else None


def _text_problem(column: _Column, value: str) -> str | None:
    if "\x00" in value:
        return f"{column.name} contains a NUL character"
    if column.length is not None and len(value) > column.length:
        return f"{column.name} is {len(value)} characters long; the column holds {column.length}"
    return None


def _problem(pairs: Iterable[tuple[_Column, Any]]) -> str | None:
    for column, value in pairs:
        problem = _value_problem(column, value)
        if problem is not None:
            return problem
    return None


def _row_problem(table: Table, row: Mapping[str, Any]) -> str | None:
    columns = _TABLES[table.name]
    return _problem((columns[name], value) for name, value in row.items() if name != "payload")


def window_problem(values: tuple[Any, ...]) -> str | None:
    """Why a window row (``window_rows.window_values``) cannot be stored, or None.

    The common cases of ``_value_problem`` inlined: every message of the stream passes here."""
    for column, value in zip(_WINDOW, values, strict=False):
        kind = type(value)
        if kind is float:
            if value - value == 0.0:  # finite: inf - inf and NaN - NaN are NaN
                continue
        elif kind is int:
            if not column.integer or INT64_MIN <= value <= INT64_MAX:
                continue
        elif kind is str:
            if "\x00" not in value and (column.length is None or len(value) <= column.length):
                continue
        elif kind is datetime or (value is None and column.nullable):
            continue
        problem = _value_problem(column, value)
        if problem is not None:
            return problem
    return None


def unfit(message: DeviceStatus | UpdateEvent) -> str | None:
    """Why a status or an event cannot be stored as it is, or None when every value fits its column."""
    if isinstance(message, UpdateEvent):
        return _row_problem(events, event_row(message, _EPOCH))
    return _row_problem(devices, status_values(message, _EPOCH))
