"""Retention: raw telemetry windows for N days, then one row per device, hour and model; rollups expire.

Portable SQL only (SQLite and PostgreSQL): old windows are read in chunks, folded in Python and
merged into ``telemetry_hourly`` in the same transaction that deletes them, so a crash leaves
either the raw windows or their rollup, never both and never neither.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from fleet.storage.repository import utc
from fleet.storage.schema import telemetry, telemetry_hourly

CHUNK = 5000
UNKNOWN = "-"
"""Model name and version of windows that reported no model (unique keys cannot hold NULL portably)."""


@dataclass
class _Acc:
    windows: int = 0
    requests: int = 0
    errors: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    maxima: dict[str, float] = field(default_factory=dict)

    def add_avg(self, key: str, value: float | None, weight: int = 1) -> None:
        if value is not None:
            self.sums[key] += value * weight
            self.counts[key] += weight

    def add_max(self, key: str, value: float | None) -> None:
        if value is not None:
            self.maxima[key] = max(self.maxima.get(key, value), value)

    def avg(self, key: str) -> float | None:
        return self.sums[key] / self.counts[key] if self.counts.get(key) else None


@dataclass(frozen=True)
class RetentionResult:
    windows_rolled_up: int
    hourly_rows_written: int
    hourly_rows_expired: int


def _hour(value: datetime) -> datetime:
    return utc(value).replace(minute=0, second=0, microsecond=0)


def _merge(conn: Connection, key: tuple[str, datetime, str, str], acc: _Acc) -> bool:
    """Fold ``acc`` into an existing rollup row (a later run for the same hour) or insert one."""
    device_id, hour, name, version = key
    where = (
        (telemetry_hourly.c.device_id == device_id)
        & (telemetry_hourly.c.hour == hour)
        & (telemetry_hourly.c.model_name == name)
        & (telemetry_hourly.c.model_version == version)
    )
    old = conn.execute(select(telemetry_hourly).where(where)).first()
    if old is not None:
        # Weighted merge with what is there (weights: windows).
        acc.windows += old.windows
        acc.requests += old.requests
        acc.errors += old.errors
        for column in ("latency_p50", "latency_p95", "cpu_percent", "memory_used_percent"):
            acc.add_avg(column, getattr(old, f"{column}_avg"), old.windows)
        for column in ("drift_psi", "low_confidence_share"):
            acc.add_avg(column, getattr(old, f"{column}_avg"), old.windows)
        acc.add_max("latency_p95", old.latency_p95_max)
        acc.add_max("latency_p99", old.latency_p99_max)
        acc.add_max("temperature_c", old.temperature_c_max)
    values: dict[str, Any] = {
        "windows": acc.windows,
        "requests": acc.requests,
        "errors": acc.errors,
        "latency_p50_avg": acc.avg("latency_p50"),
        "latency_p95_avg": acc.avg("latency_p95"),
        "latency_p95_max": acc.maxima.get("latency_p95"),
        "latency_p99_max": acc.maxima.get("latency_p99"),
        "cpu_percent_avg": acc.avg("cpu_percent"),
        "memory_used_percent_avg": acc.avg("memory_used_percent"),
        "temperature_c_max": acc.maxima.get("temperature_c"),
        "drift_psi_avg": acc.avg("drift_psi"),
        "low_confidence_share_avg": acc.avg("low_confidence_share"),
    }
    if old is not None:
        conn.execute(update(telemetry_hourly).where(where).values(**values))
        return False
    conn.execute(
        insert(telemetry_hourly).values(
            device_id=device_id, hour=hour, model_name=name, model_version=version, **values
        )
    )
    return True


def apply_retention(engine: Engine, now: datetime, raw_days: float, hourly_days: float) -> RetentionResult:
    """Fold windows older than ``raw_days`` into hourly rows; drop rollups older than ``hourly_days``."""
    cutoff = _hour(utc(now) - timedelta(days=raw_days))  # whole hours only: no hour is half raw
    rolled = written = 0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                select(telemetry)
                .where(telemetry.c.window_start < cutoff)
                .order_by(telemetry.c.id)
                .limit(CHUNK)
            ).all()
            if not rows:
                break
            groups: dict[tuple[str, datetime, str, str], _Acc] = defaultdict(_Acc)
            for row in rows:
                key = (
                    row.device_id,
                    _hour(row.window_start),
                    row.model_name or UNKNOWN,
                    row.model_version or UNKNOWN,
                )
                acc = groups[key]
                acc.windows += 1
                acc.requests += row.requests
                acc.errors += row.errors
                for column in (
                    "latency_p50",
                    "latency_p95",
                    "cpu_percent",
                    "memory_used_percent",
                    "drift_psi",
                    "low_confidence_share",
                ):
                    acc.add_avg(column, getattr(row, column))
                acc.add_max("latency_p95", row.latency_p95)
                acc.add_max("latency_p99", row.latency_p99)
                acc.add_max("temperature_c", row.temperature_c)
            for key, acc in groups.items():
                written += _merge(conn, key, acc)
            conn.execute(delete(telemetry).where(telemetry.c.id.in_([row.id for row in rows])))
            rolled += len(rows)
    with engine.begin() as conn:
        expired = conn.execute(
            delete(telemetry_hourly).where(telemetry_hourly.c.hour < utc(now) - timedelta(days=hourly_days))
        ).rowcount
    return RetentionResult(rolled, written, max(expired, 0))
