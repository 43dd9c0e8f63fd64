"""``edgefleet_device_request_latency_seconds``: a real (cumulative) Prometheus histogram per model and
version, fed by every telemetry window stored while the fleet runs.

A window carries its request count and latency p50, p95 and p99, not the agent's buckets. Each window's
requests are spread over the buckets by the piecewise-linear distribution through those quantiles
(0 at 0 ms, 50 % at p50, 95 % at p95, 99 % at p99, 100 % at p99 plus a quarter of p95..p99); the sum
is that distribution's mean times the count. So rates, averages and ``histogram_quantile`` work as on
any histogram; the quantiles between the reported ones are estimates. (The latest window per device
would give a gauge that jumps between scrapes: ``rate()`` over it means nothing.)

Each scrape reads only the windows stored since the previous one (a primary-key range, capped); the
first scrape starts the count from the newest window. Counts restart with the process, as Prometheus
counters may.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise

from prometheus_client.core import HistogramMetricFamily
from sqlalchemy import Engine

from fleet.storage.scrape import WindowRow, newest_window_id, windows_after

BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PAGE = 5000
MAX_PER_SCRAPE = 200_000
"""A larger backlog is counted over the next scrapes, so one scrape stays bounded."""


def quantile_points(p50: float, p95: float, p99: float) -> list[tuple[float, float]]:
    """(latency in seconds, share of requests at or below it); monotone even if the quantiles are not."""
    q50 = p50 / 1000
    q95 = max(p95 / 1000, q50)
    q99 = max(p99 / 1000, q95)
    top = q99 + (q99 - q95) / 4
    return [(0.0, 0.0), (q50, 0.5), (q95, 0.95), (q99, 0.99), (top, 1.0)]


def share_at_or_below(points: list[tuple[float, float]], bound: float) -> float:
    for (x0, y0), (x1, y1) in pairwise(points):
        if bound < x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (bound - x0) / (x1 - x0)
    return 1.0


def mean(points: list[tuple[float, float]]) -> float:
    return sum((y1 - y0) * (x0 + x1) / 2 for (x0, y0), (x1, y1) in pairwise(points))


@dataclass
class Series:
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS_S))
    count: int = 0
    total_s: float = 0.0

    def add(self, requests: int, p50: float, p95: float, p99: float) -> None:
        points = quantile_points(p50, p95, p99)
        for index, bound in enumerate(BUCKETS_S):
            self.buckets[index] += round(requests * share_at_or_below(points, bound))
        self.count += requests
        self.total_s += requests * mean(points)


class LatencyHistograms:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursor: int | None = None
        self.series: dict[tuple[str, str], Series] = {}

    def advance(self, engine: Engine) -> None:
        """Count the windows stored since the last call."""
        with self._lock, engine.begin() as conn:
            if self._cursor is None:
                self._cursor = newest_window_id(conn)
                return
            read = 0
            while read < MAX_PER_SCRAPE:
                page = windows_after(conn, self._cursor, PAGE)
                for window in page:
                    self._add(window)
                    self._cursor = window.id
                read += len(page)
                if len(page) < PAGE:
                    return

    def _add(self, window: WindowRow) -> None:
        if not window.requests or window.model_name is None or window.model_version is None:
            return
        if window.latency_p50 is None or window.latency_p95 is None or window.latency_p99 is None:
            return
        key = (window.model_name, window.model_version)
        self.series.setdefault(key, Series()).add(
            window.requests, window.latency_p50, window.latency_p95, window.latency_p99
        )

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "edgefleet_device_request_latency_seconds",
            "request latency devices reported, per model and version (estimated from each window's "
            "p50/p95/p99 and request count)",
            labels=["model", "version"],
        )
        with self._lock:
            for (model, version), series in sorted(self.series.items()):
                cumulative = [
                    (repr(bound), float(n)) for bound, n in zip(BUCKETS_S, series.buckets, strict=True)
                ]
                cumulative.append(("+Inf", float(series.count)))
                family.add_metric([model, version], cumulative, series.total_s)
        yield family
