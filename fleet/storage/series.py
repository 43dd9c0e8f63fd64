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
        values: dict[str, float | None] = {
            "throughput_rps": row.requests / seconds,
            "error_rate": row.errors / row.requests if row.requests else 0.0,
        }
        for metric in METRICS:
            if metric.series is not None:
                value = row._mapping[metric.name]
                values[metric.series] = None if value is None else value * metric.series_scale
        points.append((start.timestamp(), values))
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
    points: list[Point] = []
    for row in rows:
        values: dict[str, float | None] = {
            "throughput_rps": row.requests / 3600,
            "error_rate": row.errors / row.requests if row.requests else 0.0,
        }
        for metric in METRICS:
            if metric.series is not None:
                column = _HOURLY_SERIES.get(metric.series)
                value = None if column is None else row._mapping[column]
                values[metric.series] = None if value is None else value * metric.series_scale
        points.append((utc(row.hour).timestamp(), values))
    return points


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
