"""Fixed-size timing aggregates: log-bucket histograms, and what each model served (``ModelUsage``).

Request latency (a telemetry figure, queueing included) and the model's own invoke time (what
probation judges) are both kept here; nothing stores one value per request.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from protocol.messages import LatencySummary


def _log_edges(low_ms: float = 0.01, high_ms: float = 120_000.0, per_decade: int = 20) -> list[float]:
    decades = math.log10(high_ms / low_ms)
    count = math.ceil(decades * per_decade)
    return [low_ms * 10 ** (i / per_decade) for i in range(count + 1)]


LATENCY_EDGES_MS = _log_edges()
"""Bucket upper edges, 0.01 ms .. 120 s, 20 per decade (each ~12% wider than the last)."""

INVOKE_EDGES_MS = _log_edges(low_ms=0.0001, per_decade=40)
"""Invoke-time buckets: from 0.1 us (a small model's invoke takes microseconds), 40 per decade
(each ~6% wider than the last): probation reads the median's bounds from bucket edges."""


class LatencyHistogram:
    """Counts per fixed log-spaced bucket; percentiles are a bucket's upper edge (<=12% high)."""

    def __init__(self, edges: list[float] = LATENCY_EDGES_MS) -> None:
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)
        self.total = 0
        self.max_ms = 0.0
        self.sum_ms = 0.0  # the Prometheus histogram's _sum (agent.metrics_text)

    def record(self, ms: float) -> None:
        self.counts[bisect.bisect_left(self.edges, ms)] += 1
        self.total += 1
        self.max_ms = max(self.max_ms, ms)
        self.sum_ms += ms

    def _bucket_at(self, rank: int) -> int:
        """Index of the bucket holding the ``rank``-th smallest value (1-based, clipped)."""
        rank = min(max(1, rank), self.total)
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return index
        return len(self.counts) - 1

    def upper_at(self, rank: int) -> float:
        """An upper bound of the ``rank``-th smallest value: its bucket's upper edge."""
        if self.total == 0:
            return 0.0
        index = self._bucket_at(rank)
        upper = self.edges[index] if index < len(self.edges) else self.max_ms
        return min(upper, self.max_ms)

    def lower_at(self, rank: int) -> float:
        """A lower bound of the ``rank``-th smallest value: its bucket's lower edge."""
        if self.total == 0:
            return 0.0
        index = self._bucket_at(rank)
        return self.edges[index - 1] if index > 0 else 0.0

    def percentile(self, q: float) -> float:
        if self.total == 0:
            return 0.0
        return self.upper_at(math.ceil(q / 100 * self.total))

    def summary(self) -> LatencySummary | None:
        if self.total == 0:
            return None
        return LatencySummary(
            p50=_sig(self.percentile(50)),
            p95=_sig(self.percentile(95)),
            p99=_sig(self.percentile(99)),
            max=_sig(self.max_ms),
        )

    def copy(self) -> LatencyHistogram:
        copy = LatencyHistogram(self.edges)
        copy.counts = list(self.counts)
        copy.total, copy.max_ms, copy.sum_ms = self.total, self.max_ms, self.sum_ms
        return copy

    def plus(self, other: LatencyHistogram) -> LatencyHistogram:
        merged = self.copy()
        merged.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        merged.total += other.total
        merged.sum_ms += other.sum_ms
        merged.max_ms = max(self.max_ms, other.max_ms)
        return merged

    def minus(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """What was recorded since ``earlier`` (a snapshot of this histogram); the max is kept."""
        diff = self.copy()
        diff.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        diff.total = self.total - earlier.total
        diff.sum_ms = self.sum_ms - earlier.sum_ms
        return diff


def _sig(value: float, digits: int = 3) -> float:
    """Round to ``digits`` significant digits: the histogram (buckets ~12% wide) is not more
    precise, and the wire is shorter."""
    return float(f"{value:.{digits}g}")


RECENT_REQUESTS = 1000


class RecentHistogram:
    """The latest ``RECENT_REQUESTS``..``2 * RECENT_REQUESTS`` values, in two blocks: ``recent``
    fills up, then becomes ``older`` (fixed size, no per-value storage)."""

    def __init__(
        self,
        edges: list[float] = LATENCY_EDGES_MS,
        recent: LatencyHistogram | None = None,
        older: LatencyHistogram | None = None,
    ) -> None:
        self.edges = edges
        self.recent = recent if recent is not None else LatencyHistogram(edges)
        self.older = older if older is not None else LatencyHistogram(edges)

    def record(self, ms: float) -> None:
        if self.recent.total >= RECENT_REQUESTS:
            self.older, self.recent = self.recent, LatencyHistogram(self.edges)
        self.recent.record(ms)

    def merged(self) -> LatencyHistogram:
        return self.older.plus(self.recent)

    def copy(self) -> RecentHistogram:
        return RecentHistogram(self.edges, self.recent.copy(), self.older.copy())


@dataclass
class ModelUsage:
    """What one model served (cumulative in this process); probation diffs two snapshots.

    Two timings per successful request: ``latency``, the request as the client saw it (parsing,
    queueing for the interpreter, preprocessing, inference: a telemetry figure that grows with
    load), and ``invoke``, the model's own time inside the runtime for that request, divided by
    the request's instances (so a change in batch sizes does not read as a slower model). Probation
    judges ``invoke``: it excludes the queue. ``cpu_ms`` sums the serving thread's CPU time over
    the same span (``time.thread_time``), per instance, over ``timed`` requests, and ``cpu``
    keeps their distribution: CPU time does not count the time the thread waited (preempted by
    other processes, or for the GIL), so it follows the model's own work when the machine's load
    changes between the two samples probation compares.
    """

    requests: int = 0
    errors: int = 0
    """Inference failures (not bad input: that is the client's fault, not the model's)."""
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    recent: RecentHistogram = field(default_factory=RecentHistogram)
    """The latest request latencies (see ``RecentHistogram``)."""
    invoke: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(INVOKE_EDGES_MS))
    """Invoke time per instance of each timed request, in ms."""
    recent_invoke: RecentHistogram = field(default_factory=lambda: RecentHistogram(INVOKE_EDGES_MS))
    cpu_ms: float = 0.0
    """Sum over timed requests of the CPU time per instance, in ms."""
    timed: int = 0
    """Requests with an invoke time (and a CPU time)."""
    cpu: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(INVOKE_EDGES_MS))
    """CPU time per instance of each timed request that measured one, in ms."""
    recent_cpu: RecentHistogram = field(default_factory=lambda: RecentHistogram(INVOKE_EDGES_MS))

    def record(self, latency_ms: float, invoke_ms: float | None = None, cpu_ms: float | None = None) -> None:
        self.requests += 1
        self.latency.record(latency_ms)
        self.recent.record(latency_ms)
        if invoke_ms is not None:
            self.timed += 1
            self.invoke.record(invoke_ms)
            self.recent_invoke.record(invoke_ms)
            self.cpu_ms += cpu_ms or 0.0
            if cpu_ms is not None:
                self.cpu.record(cpu_ms)
                self.recent_cpu.record(cpu_ms)

    def recent_p50(self) -> float | None:
        """p50 request latency of the last RECENT_REQUESTS..2*RECENT_REQUESTS requests (telemetry:
        it includes queueing, so it follows the load; probation judges invoke time instead)."""
        merged = self.recent.merged()
        return merged.percentile(50) if merged.total else None

    @property
    def cpu_per_instance_ms(self) -> float | None:
        return self.cpu_ms / self.timed if self.timed else None

    def copy(self) -> ModelUsage:
        return ModelUsage(
            self.requests,
            self.errors,
            self.latency.copy(),
            self.recent.copy(),
            self.invoke.copy(),
            self.recent_invoke.copy(),
            self.cpu_ms,
            self.timed,
            self.cpu.copy(),
            self.recent_cpu.copy(),
        )

    def minus(self, earlier: ModelUsage) -> ModelUsage:
        """What was served since ``earlier`` (the recent blocks are not diffed: left empty)."""
        return ModelUsage(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            self.latency.minus(earlier.latency),
            invoke=self.invoke.minus(earlier.invoke),
            cpu_ms=self.cpu_ms - earlier.cpu_ms,
            timed=self.timed - earlier.timed,
            cpu=self.cpu.minus(earlier.cpu),
        )
