"""Telemetry windows, the bulk of the stream, written with a fixed number of statements per batch:
SQLAlchemy's per-row parameter handling cost more than the database's work.

PostgreSQL: one statement inserts every window (columns passed as arrays, so its text never changes
and the server keeps it prepared) and upserts the devices' latest windows; one more updates the
devices. SQLite: one multi-row INSERT per 500 windows (each statement execution lets the MQTT
thread take the interpreter lock, and one per window cost the writer a wait each), the latest
windows upserted from the ids it gave, one executemany for the devices. Statement errors surface as
SQLAlchemy's exceptions, like every other statement's: an unavailable database is an
``OperationalError`` (the batch is retried, not dead-lettered).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, DateTime, Float, Integer, String, Text
from sqlalchemy.exc import DBAPIError

from fleet.storage.latest import LATEST_COLUMNS
from fleet.storage.metrics import METRIC_NAMES
from fleet.storage.schema import telemetry
from fleet.storage.window_rows import (
    END,
    PAYLOAD,
    RECEIVED,
    TIME_INDEXES,
    WINDOW_COLUMNS,
)
from protocol.messages import TelemetryWindow
from protocol.schema import ModelRef

Window = tuple[TelemetryWindow, tuple[Any, ...]]
"""A window and its row (``window_rows.window_values``)."""

_KEYS = "device_id, seq, window_start"
_METRIC_INDEXES = tuple(WINDOW_COLUMNS.index(name) for name in METRIC_NAMES)
_COLUMNS = ", ".join(WINDOW_COLUMNS)
_LATEST = ", ".join(LATEST_COLUMNS)
_LATEST_SET = ", ".join(f"{name} = excluded.{name}" for name in LATEST_COLUMNS if name != "device_id")
_LATEST_UPSERT = (
    f"ON CONFLICT (device_id) DO UPDATE SET {_LATEST_SET} "
    "WHERE device_latest.telemetry_id < excluded.telemetry_id"
)
_NEWER_MODEL = (
    "{n} IS NOT NULL AND (devices.serving_at IS NULL OR devices.serving_at < {end}) AND "
    "(devices.model_name IS NULL OR devices.model_name <> {n} OR devices.model_version <> {v})"
)
_DEVICES_SET = (
    "last_seen = CASE WHEN devices.last_seen < {seen} THEN {seen} ELSE devices.last_seen END, "
    + ", ".join(
        f"{column} = CASE WHEN {_NEWER_MODEL} THEN {{{value}}} ELSE devices.{column} END"
        for column, value in (
            ("model_name", "n"),
            ("model_version", "v"),
            ("model_sha256", "sha"),
            ("serving_at", "end"),
        )
    )
)
"""Last seen, and the model the newest window names when it is newer than what set the model and
differs from it (``serving.record_window_models``): one UPDATE per device instead of two."""
_DEVICES_WHERE = "devices.device_id = {d} AND (devices.last_seen < {seen} OR " + _NEWER_MODEL + ")"


def store_windows(conn: Connection, batch: Sequence[Window]) -> int:
    """Store the windows (a redelivered one is skipped), keep each device's latest window and mark
    the devices that sent one as seen, with the model their newest window names; how many were new."""
    if conn.dialect.name == "postgresql":
        return _store_postgresql(conn, batch)
    return _store_sqlite(conn, batch)


def _per_device(batch: Sequence[Window], touched: set[str]) -> list[tuple[Any, ...]]:
    """(device, last received, model name, version, sha256, window end) per touched device, sorted
    (rows are locked in one order, whichever worker writes): last seen from every window of the
    batch, the model from its newest window that names one."""
    seen: dict[str, datetime] = {}
    model: dict[str, tuple[ModelRef, datetime]] = {}
    for window, values in batch:
        device_id = values[0]
        if device_id not in touched:
            continue
        received = values[RECEIVED]
        if device_id not in seen or received > seen[device_id]:
            seen[device_id] = received
        if window.model is not None:
            end = values[END]  # in UTC, as SQLite compares the text
            kept = model.get(device_id)
            if kept is None or end > kept[1]:
                model[device_id] = (window.model, end)
    out: list[tuple[Any, ...]] = []
    for device_id in sorted(touched):
        newest = model.get(device_id)
        if newest is None:
            out.append((device_id, seen[device_id], None, None, None, None))
        else:
            ref, end = newest
            out.append((device_id, seen[device_id], ref.name, ref.version, ref.sha256, end))
    return out


# ------------------------------------------------------------------------------ SQLite

_SQLITE_ROW = f"({', '.join('?' * len(WINDOW_COLUMNS))})"
_SQLITE_INSERT = f"INSERT INTO telemetry ({_COLUMNS}) VALUES {{rows}} ON CONFLICT ({_KEYS}) DO NOTHING"
_SQLITE_CHUNK = 500
"""Rows per INSERT: 500 x 20 parameters stays well under SQLite's limit of 32,766."""
_SQLITE_LATEST = (
    f"INSERT INTO device_latest ({_LATEST}) SELECT {_LATEST.replace('telemetry_id', 'id')} FROM telemetry "
    "WHERE id IN (SELECT max(id) FROM telemetry WHERE id BETWEEN ?1 AND ?2 GROUP BY device_id) "
    f"{_LATEST_UPSERT}"
)
_SQLITE_TOUCHED = "SELECT DISTINCT device_id FROM telemetry WHERE id BETWEEN ?1 AND ?2"
_SQLITE_PLACES = {"d": "?1", "seen": "?2", "n": "?3", "v": "?4", "sha": "?5", "end": "?6"}
_SQLITE_DEVICES = (
    f"UPDATE devices SET {_DEVICES_SET.format(**_SQLITE_PLACES)} "
    f"WHERE {_DEVICES_WHERE.format(**_SQLITE_PLACES)}"
)


def sqlite_time(value: datetime) -> str:
    """A UTC timestamp as SQLAlchemy's SQLite dialect stores it (text that sorts by time), formatted
    as it does: half the time of ``isoformat``, and five of these per window."""
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 - the fastest of the three forms
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def _sqlite_row(values: tuple[Any, ...]) -> list[Any]:
    row = list(values)
    for index in TIME_INDEXES:
        row[index] = sqlite_time(row[index])
    return row


@contextmanager
def _as_sqlalchemy_errors(conn: Connection, statement: str) -> Iterator[None]:
    """The driver's exceptions as the ones SQLAlchemy raises for its own statements."""
    error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except error as exc:
        raise DBAPIError.instance(statement, None, exc, error, dialect=conn.dialect) from exc


def _store_sqlite(conn: Connection, batch: Sequence[Window]) -> int:
    cursor = conn.connection.cursor()
    try:
        first = last = None
        inserted = 0
        for start in range(0, len(batch), _SQLITE_CHUNK):
            chunk = batch[start : start + _SQLITE_CHUNK]
            statement = _SQLITE_INSERT.format(rows=", ".join([_SQLITE_ROW] * len(chunk)))
            params = [value for _window, values in chunk for value in _sqlite_row(values)]
            with _as_sqlalchemy_errors(conn, statement):
                cursor.execute(statement, params)
                # Rows inserted by one statement in a write transaction take consecutive ids
                # (INTEGER PRIMARY KEY: the largest plus one); a skipped redelivery takes none.
                newest, count = cursor.execute("SELECT last_insert_rowid(), changes()").fetchone()
            if count:
                first = newest - count + 1 if first is None else first
                last = newest
                inserted += count
        if first is None:
            return 0
        with _as_sqlalchemy_errors(conn, _SQLITE_LATEST):
            cursor.execute(_SQLITE_LATEST, (first, last))
            if inserted == len(batch):
                touched = {values[0] for _window, values in batch}
            else:
                touched = {row[0] for row in cursor.execute(_SQLITE_TOUCHED, (first, last))}
        devices = [
            (device_id, sqlite_time(seen), name, version, sha, None if end is None else sqlite_time(end))
            for device_id, seen, name, version, sha, end in _per_device(batch, touched)
        ]
        with _as_sqlalchemy_errors(conn, _SQLITE_DEVICES):
            cursor.executemany(_SQLITE_DEVICES, devices)
    finally:
        cursor.close()
    return inserted


# ------------------------------------------------------------------------------ PostgreSQL


def _pg_array(column: str) -> str:
    kind = telemetry.c[column].type
    if isinstance(kind, DateTime):
        return "timestamptz[]"
    if isinstance(kind, BigInteger | Integer):
        return "bigint[]"
    if isinstance(kind, Float):
        return "float8[]"
    if isinstance(kind, String | Text) or column == "payload":
        return "text[]"
    raise TypeError(f"no array type for telemetry.{column}")


# Arrays go in psycopg's binary format (``%b``): its text format escapes every JSON payload in Python.
_PG_ARRAYS = ", ".join(f"%(c{i})b::{_pg_array(name)}" for i, name in enumerate(WINDOW_COLUMNS))
_PG_SELECT = ", ".join(
    f"b.{name}::json" if i == PAYLOAD else f"b.{name}" for i, name in enumerate(WINDOW_COLUMNS)
)
_PG_INSERT = f"""
WITH ins AS (
    INSERT INTO telemetry ({_COLUMNS})
    SELECT {_PG_SELECT}
    FROM unnest({_PG_ARRAYS}) WITH ORDINALITY AS b({_COLUMNS}, ord)
    ORDER BY b.ord
    ON CONFLICT ({_KEYS}) DO NOTHING
    RETURNING id, {", ".join(name for name in LATEST_COLUMNS if name != "telemetry_id")}
), latest AS (
    INSERT INTO device_latest ({_LATEST})
    SELECT DISTINCT ON (device_id) {_LATEST.replace("telemetry_id", "id")}
    FROM ins ORDER BY device_id, id DESC
    {_LATEST_UPSERT}
)
SELECT device_id FROM ins
"""
_PG_PLACES = {"d": "u.d", "seen": "u.seen", "n": "u.n", "v": "u.v", "sha": "u.sha", "end": "u.end_at"}
_PG_DEVICES = (
    f"UPDATE devices SET {_DEVICES_SET.format(**_PG_PLACES)} "
    "FROM unnest(%(d)b::text[], %(seen)b::timestamptz[], %(n)b::text[], %(v)b::text[], "
    "%(sha)b::text[], %(end)b::timestamptz[]) AS u(d, seen, n, v, sha, end_at) "
    f"WHERE {_DEVICES_WHERE.format(**_PG_PLACES)}"
)


def _store_postgresql(conn: Connection, batch: Sequence[Window]) -> int:
    columns = zip(*(values for _window, values in batch), strict=True)
    params = {f"c{i}": list(column) for i, column in enumerate(columns)}
    stored = [row[0] for row in conn.exec_driver_sql(_PG_INSERT, params)]
    if not stored:
        return 0
    per_device = list(zip(*_per_device(batch, set(stored)), strict=True))
    names = ("d", "seen", "n", "v", "sha", "end")
    conn.exec_driver_sql(
        _PG_DEVICES, {name: list(column) for name, column in zip(names, per_device, strict=True)}
    )
    return len(stored)
