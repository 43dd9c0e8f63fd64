"""Telemetry: request metrics in fixed-size aggregates, and one ``TelemetryWindow`` per interval.

Nothing here talks to paho: windows go to a ``Sink`` (``publish(topic, payload, qos, retain)``).
Time comes from injected clocks: monotonic for durations, the wall clock only for timestamps.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import psutil

from agent.store import write_json
from protocol.messages import LatencySummary, PredictionHealth, ResourceUsage, TelemetryWindow
from protocol.schema import ModelRef
from protocol.topics import Topics

log = logging.getLogger(__name__)

LOW_CONFIDENCE = 0.5


class Sink(Protocol):
    """Where MQTT messages go; the MQTT link in production, a list in tests."""

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...


def _log_edges(low_ms: float = 0.01, high_ms: float = 120_000.0, per_decade: int = 20) -> list[float]:
    decades = math.log10(high_ms / low_ms)
    count = math.ceil(decades * per_decade)
    return [low_ms * 10 ** (i / per_decade) for i in range(count + 1)]


LATENCY_EDGES_MS = _log_edges()
"""Bucket upper edges, 0.01 ms .. 120 s, 20 per decade (each ~12% wider than the last)."""


class LatencyHistogram:
    """Counts per fixed log-spaced bucket; percentiles are a bucket's upper edge (<=12% high)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_EDGES_MS) + 1)
        self.total = 0
        self.max_ms = 0.0

    def record(self, ms: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_EDGES_MS, ms)] += 1
        self.total += 1
        self.max_ms = max(self.max_ms, ms)

    def percentile(self, q: float) -> float:
        if self.total == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100 * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                upper = LATENCY_EDGES_MS[index] if index < len(LATENCY_EDGES_MS) else self.max_ms
                return min(upper, self.max_ms)
        return self.max_ms

    def summary(self) -> LatencySummary | None:
        if self.total == 0:
            return None
        return LatencySummary(
            p50=self.percentile(50), p95=self.percentile(95), p99=self.percentile(99), max=self.max_ms
        )


@dataclass
class _Window:
    requests: int = 0
    errors: dict[str, int] | None = None
    latency: LatencyHistogram | None = None
    predictions: int = 0
    confidence_sum: float = 0.0
    low_confidence: int = 0
    class_counts: dict[int, int] | None = None
    nonfinite_inputs: int = 0

    def __post_init__(self) -> None:
        self.errors = {}
        self.latency = LatencyHistogram()
        self.class_counts = {}


class RequestMetrics:
    """Thread-safe counters the HTTP handlers feed; ``take()`` returns and resets the window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = _Window()

    def record_success(
        self, latency_ms: float, classes: list[int] | None, confidences: list[float] | None
    ) -> None:
        with self._lock:
            w = self._window
            w.requests += 1
            assert w.latency is not None and w.class_counts is not None
            w.latency.record(latency_ms)
            if classes is not None and confidences is not None:
                w.predictions += len(classes)
                w.confidence_sum += sum(confidences)
                w.low_confidence += sum(1 for c in confidences if c < LOW_CONFIDENCE)
                for index in classes:
                    w.class_counts[index] = w.class_counts.get(index, 0) + 1

    def record_error(self, kind: str, nonfinite: bool = False) -> None:
        with self._lock:
            w = self._window
            w.requests += 1
            assert w.errors is not None
            w.errors[kind] = w.errors.get(kind, 0) + 1
            if nonfinite:
                w.nonfinite_inputs += 1

    def take(self) -> _Window:
        with self._lock:
            window, self._window = self._window, _Window()
        return window


def sample_temperature() -> float | None:
    """The first temperature sensor's reading in Celsius, or None (no sensor, no support, error)."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except Exception:
        return None
    for readings in (sensors or {}).values():
        for reading in readings:
            if reading.current is not None and math.isfinite(reading.current):
                return float(reading.current)
    return None


def sample_resources(state_dir: Path) -> ResourceUsage:
    memory = psutil.virtual_memory()
    try:
        disk_free: int | None = psutil.disk_usage(str(state_dir)).free
    except OSError:
        disk_free = None
    return ResourceUsage(
        cpu_percent=max(0.0, psutil.cpu_percent(interval=None)),
        process_rss_bytes=psutil.Process().memory_info().rss,
        memory_used_percent=min(100.0, max(0.0, memory.percent)),
        memory_available_bytes=memory.available,
        disk_free_bytes=disk_free,
        temperature_c=sample_temperature(),
    )


class Telemetry:
    """Builds and publishes one ``TelemetryWindow`` per call of ``publish_window``."""

    def __init__(
        self,
        device_id: str,
        topics: Topics,
        sink: Sink,
        *,
        metrics: RequestMetrics,
        state_dir: Path,
        model_ref: Callable[[], ModelRef | None],
        dropped: Callable[[], int] = lambda: 0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        resources: Callable[[Path], ResourceUsage] = sample_resources,
    ) -> None:
        self.device_id = device_id
        self.topic = topics.telemetry(device_id)
        self.sink = sink
        self.metrics = metrics
        self.state_dir = state_dir
        self.model_ref = model_ref
        self.dropped = dropped
        self.monotonic = monotonic
        self.wall = wall
        self.resources = resources
        self._seq_path = state_dir / "telemetry.json"
        self._lock = threading.Lock()
        self._started = monotonic()
        self._window_start_wall = wall()
        self._seq = self._load_seq()
        psutil.cpu_percent(interval=None)  # start the CPU measurement window

    def _load_seq(self) -> int:
        try:
            return int(json.loads(self._seq_path.read_text())["next_seq"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def build_window(self) -> TelemetryWindow:
        window = self.metrics.take()
        end = self.wall()
        prediction = None
        assert window.latency is not None and window.errors is not None and window.class_counts is not None
        if window.predictions or window.nonfinite_inputs:
            counts = None
            if window.class_counts:
                size = max(window.class_counts) + 1
                counts = [window.class_counts.get(i, 0) for i in range(size)]
            prediction = PredictionHealth(
                predictions=window.predictions,
                mean_confidence=window.confidence_sum / window.predictions if window.predictions else None,
                low_confidence_share=window.low_confidence / window.predictions
                if window.predictions
                else None,
                class_counts=counts,
                nonfinite_inputs=window.nonfinite_inputs,
            )
        message = TelemetryWindow(
            device_id=self.device_id,
            seq=self._seq,
            window_start=self._window_start_wall,
            window_end=end,
            model=self.model_ref(),
            requests=window.requests,
            errors=dict(window.errors),
            latency_ms=window.latency.summary(),
            resources=self.resources(self.state_dir),
            uptime_s=max(0.0, self.monotonic() - self._started),
            prediction=prediction,
            dropped_messages=self.dropped(),
        )
        self._window_start_wall = end
        self._seq += 1
        try:
            write_json(self._seq_path, {"next_seq": self._seq})
        except OSError as exc:
            log.warning("cannot persist the telemetry sequence number: %s", exc)
        return message

    def publish_window(self) -> TelemetryWindow:
        with self._lock:
            message = self.build_window()
        self.sink.publish(self.topic, message.model_dump_json().encode(), 1, False)
        return message
