"""Retention: raw telemetry windows for N days, then one row per device, hour and model; rollups and
dead letters expire.

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

from fleet.storage.ingest import DEAD_LETTER_CAP, DEAD_LETTER_DAYS, expire_dead_letters
from fleet.storage.leases import Fence, check_fence
from fleet.storage.metrics import HOURLY_COLUMNS, Rollup
from fleet.storage.schema import telemetry, telemetry_hourly
from fleet.storage.times import utc

CHUNK = 5000
__all__ = ["DEAD_LETTER_CAP", "DEAD_LETTER_DAYS", "RetentionResult", "apply_retention"]
UNKNOWN = "-"
"""Model name and version of windows that reported no model (unique keys cannot hold NULL portably)."""


@dataclass
class _Acc:
    """One hour of one device's windows on one model, folded per ``HOURLY_COLUMNS``."""

    windows: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    maxima: dict[str, float] = field(default_factory=dict)

    def add(self, rollup: Rollup, column: str, value: float | None, weight: int = 1) -> None:
        if value is None:
            return
        if rollup is Rollup.MAX:
            self.maxima[column] = max(self.maxima.get(column, value), value)
        elif rollup is Rollup.SUM:
            self.sums[column] += value
        else:
            self.sums[column] += value * weight
            self.counts[column] += weight

    def add_window(self, row: Any) -> None:
        self.windows += 1
        for metric, rollup, column in HOURLY_COLUMNS:
            self.add(rollup, column, row._mapping[metric.name])

    def add_rollup(self, old: Any) -> None:
        """Merge an existing rollup row (an earlier run for the same hour), weighted by its windows."""
        self.windows += old.windows
        for _metric, rollup, column in HOURLY_COLUMNS:
            self.add(rollup, column, old._mapping[column], old.windows)

    def values(self) -> dict[str, Any]:
        values: dict[str, Any] = {"windows": self.windows}
        for _metric, rollup, column in HOURLY_COLUMNS:
            if rollup is Rollup.SUM:
                values[column] = int(self.sums[column])
            elif rollup is Rollup.MAX:
                values[column] = self.maxima.get(column)
            else:
                values[column] = self.sums[column] / self.counts[column] if self.counts.get(column) else None
        return values


@dataclass(frozen=True)
class RetentionResult:
    windows_rolled_up: int
    hourly_rows_written: int
    hourly_rows_expired: int
    dead_letters_expired: int = 0


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
        acc.add_rollup(old)
        conn.execute(update(telemetry_hourly).where(where).values(**acc.values()))
        return False
    conn.execute(
        insert(telemetry_hourly).values(
            device_id=device_id, hour=hour, model_name=name, model_version=version, **acc.values()
        )
    )
    return True


def apply_retention(
    engine: Engine,
    now: datetime,
    raw_days: float,
    hourly_days: float,
    *,
    dead_letter_days: float = DEAD_LETTER_DAYS,
    dead_letter_cap: int = DEAD_LETTER_CAP,
    fence: Fence | None = None,
) -> RetentionResult:
    """Fold windows older than ``raw_days`` into hourly rows; drop rollups older than ``hourly_days``
    and dead letters older than ``dead_letter_days`` or beyond the newest ``dead_letter_cap``.
    ``fence``: the elected worker's token, checked in each transaction (two workers folding the
    same windows would count them twice in the rollups)."""
    cutoff = _hour(utc(now) - timedelta(days=raw_days))  # whole hours only: no hour is half raw
    rolled = written = 0
    while True:
        with engine.begin() as conn:
            if fence is not None:
                check_fence(conn, fence)
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
                groups[key].add_window(row)
            for key, acc in groups.items():
                written += _merge(conn, key, acc)
            conn.execute(delete(telemetry).where(telemetry.c.id.in_([row.id for row in rows])))
            rolled += len(rows)
    with engine.begin() as conn:
        if fence is not None:
            check_fence(conn, fence)
        expired = conn.execute(
            delete(telemetry_hourly).where(telemetry_hourly.c.hour < utc(now) - timedelta(days=hourly_days))
        ).rowcount
        letters = expire_dead_letters(conn, utc(now) - timedelta(days=dead_letter_days), dead_letter_cap)
    return RetentionResult(rolled, written, max(expired, 0), letters)
