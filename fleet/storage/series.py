"""Chart series of one device: raw windows where kept, hourly rollups beyond, bucket-averaged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from fleet.storage.metrics import HOURLY_COLUMNS, METRICS
from fleet.storage.schema import telemetry, telemetry_hourly
from fleet.storage.times import utc

Point = tuple[float, dict[str, float | None]]

SERIES_COLUMNS = (
    "throughput_rps",
    "error_rate",
    *(metric.series for metric in METRICS if metric.series is not None),
)
"""Throughput and error rate come from the counters; every other series is one metric's."""
_RAW_SERIES = {metric.series: metric.name for metric in METRICS if metric.series is not None}
"""Series name -> the raw telemetry column it is read from."""
_HOURLY_SERIES = {
    metric.series: name
    for metric, rollup, name in HOURLY_COLUMNS
    if metric.series is not None and rollup is metric.series_rollup
}


def _raw_points(conn: Connection, device_id: str, since: datetime, until: datetime) -> list[Point]:
    columns = [telemetry.c[metric.name] for metric in METRICS]
    rows = conn.execute(
        select(telemetry.c.window_start, telemetry.c.window_end, *columns)
        .where(
            telemetry.c.device_id == device_id,
            telemetry.c.window_start >= since,
            telemetry.c.window_start < until,
        )
        .order_by(telemetry.c.window_start)
    ).all()
    points: list[Point] = []
    for row in rows:
        start, end = utc(row.window_start), utc(row.window_end)
        seconds = max((end - start).total_seconds(), 1e-9)
        points.append((start.timestamp(), _point_values(row, seconds, _RAW_SERIES)))
    return points


def _hourly_points(conn: Connection, device_id: str, since: datetime, before: datetime) -> list[Point]:
    rows = conn.execute(
        select(telemetry_hourly)
        .where(
            telemetry_hourly.c.device_id == device_id,
            telemetry_hourly.c.hour >= since,
            telemetry_hourly.c.hour < before,
        )
        .order_by(telemetry_hourly.c.hour)
    ).all()
    return [(utc(row.hour).timestamp(), _point_values(row, 3600, _HOURLY_SERIES)) for row in rows]


def _point_values(row: Any, seconds: float, columns_of: dict[str, str]) -> dict[str, float | None]:
    """One point's figures from a raw window or an hourly row: throughput and error rate from its
    counts, then every series metric from the column ``columns_of`` names (None where it has none)."""
    values: dict[str, float | None] = {
        "throughput_rps": row.requests / seconds,
        "error_rate": row.errors / row.requests if row.requests else 0.0,
    }
    for metric in METRICS:
        if metric.series is not None:
            column = columns_of.get(metric.series)
            value = None if column is None else row._mapping[column]
            values[metric.series] = None if value is None else value * metric.series_scale
    return values


def telemetry_series(
    conn: Connection, device_id: str, since: datetime, until: datetime, max_points: int
) -> dict[str, Any]:
    """Columns of one device's windows in ``[since, until)``, averaged into at most ``max_points`` buckets.

    Raw windows where they are kept; hourly rollups (``telemetry_hourly``) for older hours.
    """
    raw = _raw_points(conn, device_id, since, until)
    first_raw = raw[0][0] if raw else until.timestamp()
    before = min(until, datetime.fromtimestamp(first_raw, UTC))
    points = _hourly_points(conn, device_id, since, before) + raw
    start_s, end_s = since.timestamp(), until.timestamp()
    bucket = max((end_s - start_s) / max_points, 1e-9)
    if len(points) <= max_points:
        buckets = [[p] for p in points]
    else:
        grouped: dict[int, list[Point]] = {}
        for point in points:
            grouped.setdefault(int((point[0] - start_s) // bucket), []).append(point)
        buckets = [grouped[key] for key in sorted(grouped)]
    series: dict[str, Any] = {"t": [], **{column: [] for column in SERIES_COLUMNS}}
    for members in buckets:
        series["t"].append(datetime.fromtimestamp(members[0][0], UTC).isoformat())
        for column in SERIES_COLUMNS:
            values = [v for _, p in members if (v := p[column]) is not None]
            series[column].append(round(sum(values) / len(values), 4) if values else None)
    return {"device_id": device_id, "since": since.isoformat(), "until": until.isoformat(), "series": series}
