"""The one table of telemetry metrics: each row drives its column in ``telemetry``, its rollup columns
in ``telemetry_hourly``, its field in a device's latest window, its chart series and its place in the
health topic (and a Home Assistant sensor). Adding a metric is one row here plus one migration.

No I/O and no imports from the rest of the fleet: the schema, the views and the publishers read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from protocol.messages import TelemetryWindow


class Rollup(StrEnum):
    """How an hour of windows folds into one ``telemetry_hourly`` column."""

    SUM = "sum"
    AVG = "avg"
    MAX = "max"


def rollup_column(metric: str, rollup: Rollup) -> str:
    """A sum keeps the metric's name (``requests``); averages and maxima get a suffix."""
    return metric if rollup is Rollup.SUM else f"{metric}_{rollup.value}"


@dataclass(frozen=True)
class Sensor:
    """A Home Assistant sensor on the device's health topic."""

    label: str
    unit: str | None = None
    device_class: str | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    """Column in ``telemetry``, field of the latest window, key of the health topic."""
    integer: bool
    """BIGINT when True, else FLOAT."""
    nullable: bool
    read: Callable[[TelemetryWindow], float | int | None]
    rollups: tuple[Rollup, ...] = ()
    """The ``telemetry_hourly`` columns kept once raw windows expire."""
    series: str | None = None
    """Name of the chart series (``GET .../series``); None when it has no plain series."""
    series_scale: float = 1.0
    series_rollup: Rollup | None = None
    """Which rollup column the series reads in hours whose raw windows are gone (None: a gap)."""
    health: bool = False
    """Published on ``fleet/devices/{id}/health``."""
    sensor: Sensor | None = None


def _latency(pick: Callable[[float, float, float], float]) -> Callable[[TelemetryWindow], float | None]:
    def read(window: TelemetryWindow) -> float | None:
        latency = window.latency_ms
        return None if latency is None else pick(latency.p50, latency.p95, latency.p99)

    return read


def _drift(window: TelemetryWindow) -> float | None:
    return window.prediction.drift_psi if window.prediction else None


def _low_confidence(window: TelemetryWindow) -> float | None:
    return window.prediction.low_confidence_share if window.prediction else None


def _out_of_range(window: TelemetryWindow) -> float | None:
    return window.prediction.out_of_range_share if window.prediction else None


def _health(name: str) -> Callable[[TelemetryWindow], float | int | None]:
    """A prediction-health member, None when the window has no prediction block."""

    def read(window: TelemetryWindow) -> float | int | None:
        value: float | int | None = getattr(window.prediction, name) if window.prediction else None
        return value

    return read


METRICS: tuple[Metric, ...] = (
    # Counters: summed per hour; their series (throughput, error rate) are derived in storage.series.
    Metric("requests", True, False, lambda w: w.requests, (Rollup.SUM,)),
    Metric("errors", True, False, lambda w: sum(w.errors.values()), (Rollup.SUM,)),
    Metric(
        "latency_p50",
        False,
        True,
        _latency(lambda p50, _p95, _p99: p50),
        (Rollup.AVG,),
        series="latency_p50",
        series_rollup=Rollup.AVG,
    ),
    Metric(
        "latency_p95",
        False,
        True,
        _latency(lambda _p50, p95, _p99: p95),
        (Rollup.AVG, Rollup.MAX),
        series="latency_p95",
        series_rollup=Rollup.AVG,
        health=True,
        sensor=Sensor("p95 latency", "ms"),
    ),
    Metric(
        "latency_p99",
        False,
        True,
        _latency(lambda _p50, _p95, p99: p99),
        (Rollup.MAX,),
        series="latency_p99",
        series_rollup=Rollup.MAX,
    ),
    Metric(
        "cpu_percent",
        False,
        False,
        lambda w: w.resources.cpu_percent,
        (Rollup.AVG,),
        series="cpu_percent",
        series_rollup=Rollup.AVG,
        health=True,
        sensor=Sensor("CPU", "%"),
    ),
    Metric(
        "process_rss_bytes",
        True,
        False,
        lambda w: w.resources.process_rss_bytes,
        series="process_rss_mib",
        series_scale=1 / 1048576,
    ),
    Metric(
        "memory_used_percent",
        False,
        False,
        lambda w: w.resources.memory_used_percent,
        (Rollup.AVG,),
        series="memory_used_percent",
        series_rollup=Rollup.AVG,
        health=True,
        sensor=Sensor("memory", "%"),
    ),
    Metric(
        "temperature_c",
        False,
        True,
        lambda w: w.resources.temperature_c,
        (Rollup.MAX,),
        series="temperature_c",
        series_rollup=Rollup.MAX,
        health=True,
        sensor=Sensor("temperature", "°C", "temperature"),
    ),
    Metric(
        "drift_psi",
        False,
        True,
        _drift,
        (Rollup.AVG,),
        series="drift_psi",
        series_rollup=Rollup.AVG,
        health=True,
        sensor=Sensor("drift PSI"),
    ),
    Metric(
        "low_confidence_share",
        False,
        True,
        _low_confidence,
        (Rollup.AVG,),
        series="low_confidence_share",
        series_rollup=Rollup.AVG,
        health=True,
    ),
    Metric(
        "out_of_range_share",
        False,
        True,
        _out_of_range,
        (Rollup.AVG,),
        series="out_of_range_share",
        series_rollup=Rollup.AVG,
        health=True,
    ),
    # The drift tests (``agent.drift``): significances, -log10 p; hours keep their maxima, since
    # one drifted window is the news and an average would hide it.
    Metric(
        "input_drift",
        False,
        True,
        _health("input_drift"),
        (Rollup.MAX,),
        series="input_drift",
        series_rollup=Rollup.MAX,
        health=True,
    ),
    Metric(
        "stuck_features",
        True,
        True,
        _health("stuck_features"),
        (Rollup.MAX,),
        series="stuck_features",
        series_rollup=Rollup.MAX,
        health=True,
    ),
    Metric(
        "output_drift",
        False,
        True,
        _health("output_drift"),
        (Rollup.MAX,),
        series="output_drift",
        series_rollup=Rollup.MAX,
        health=True,
    ),
)

METRIC_NAMES = tuple(metric.name for metric in METRICS)
HOURLY_COLUMNS: tuple[tuple[Metric, Rollup, str], ...] = tuple(
    (metric, rollup, rollup_column(metric.name, rollup)) for metric in METRICS for rollup in metric.rollups
)


def metric_values(window: TelemetryWindow) -> dict[str, float | int | None]:
    """Every metric of one window, by name: the stored row's measured columns."""
    return {metric.name: metric.read(window) for metric in METRICS}
