"""Telemetry: request metrics in fixed-size aggregates, and one ``TelemetryWindow`` per interval.

Nothing here talks to paho: windows go to a ``Sink`` (``publish(topic, payload, qos, retain)``).
Time comes from injected clocks: monotonic for durations, the wall clock only for timestamps.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import psutil

from agent.drift import FeatureBatch, FeatureWindow, confidence_p05, input_drift, output_drift, psi
from agent.resources import guarded, sample_resources, sample_temperature
from agent.store import write_json
from agent.usage import INVOKE_EDGES_MS, LATENCY_EDGES_MS, LatencyHistogram, ModelUsage, RecentHistogram
from protocol.manifest import BaselineStats
from protocol.messages import PredictionHealth, ResourceUsage, TelemetryWindow
from protocol.schema import ModelRef
from protocol.telemetry_wire import encode_compact
from protocol.topics import Topics

__all__ = [
    "INVOKE_EDGES_MS",
    "LATENCY_EDGES_MS",
    "LatencyHistogram",
    "ModelUsage",
    "RecentHistogram",
    "RequestMetrics",
    "Sink",
    "Telemetry",
    "encode_window",
    "prediction_health",
    "psi",
    "sample_resources",
    "sample_temperature",
]

log = logging.getLogger(__name__)

LOW_CONFIDENCE = 0.5


class Sink(Protocol):
    """Where MQTT messages go; the MQTT link in production, a list in tests."""

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...


CONFIDENCE_BINS = 100
"""Top-confidence histogram resolution: p05 is exact to 0.01."""


@dataclass
class _Window:
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    predictions: int = 0
    confidence_sum: float = 0.0
    low_confidence: int = 0
    confidence_counts: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    class_counts: dict[int, int] = field(default_factory=dict)
    output_counts: npt.NDArray[np.int64] | None = None
    instances: int = 0
    out_of_range: int = 0
    nonfinite_inputs: int = 0
    features: FeatureWindow | None = None
    """The first input's summary features (``ActiveModel.input_features``)."""


class RequestMetrics:
    """Thread-safe counters the HTTP handlers feed; ``take()`` returns and resets the window.

    ``totals`` and ``usage`` are cumulative since start (``take`` leaves them): /metrics serves
    them, and a Prometheus counter must never go back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = _Window()
        self._usage: dict[str, ModelUsage] = {}
        self._totals: dict[tuple[str | None, str], int] = {}

    def record_success(  # noqa: PLR0913 - one request's figures, keyword-only after the model
        self,
        latency_ms: float,
        model_sha: str | None = None,
        *,
        classes: npt.NDArray[np.int64] | None = None,
        confidences: npt.NDArray[np.float32] | None = None,
        output_counts: npt.NDArray[np.int64] | None = None,
        instances: int = 0,
        out_of_range: int = 0,
        invoke_ms: float | None = None,
        cpu_ms: float | None = None,
        features: FeatureBatch | None = None,
    ) -> None:
        """``invoke_ms`` and ``cpu_ms``: the model's own time per instance (``PredictResult``);
        ``features``: the first input's summary features (``ActiveModel.input_features``)."""
        with self._lock:
            w = self._window
            w.requests += 1
            self._totals[model_sha, "ok"] = self._totals.get((model_sha, "ok"), 0) + 1
            w.latency.record(latency_ms)
            w.instances += instances
            w.out_of_range += out_of_range
            if features is not None and len(features.summary):
                if w.features is None or not w.features.fits(features):
                    w.features = FeatureWindow.of(features)  # first, or the model changed mid-window
                else:
                    w.features.add(features)
            if classes is not None and confidences is not None:
                # Plain Python on .tolist(): for the usual one-instance request, several times
                # cheaper than numpy calls on one-element arrays.
                counts, class_counts = w.confidence_counts, w.class_counts
                top = CONFIDENCE_BINS - 1
                for index, confidence in zip(classes.tolist(), confidences.tolist(), strict=True):
                    w.predictions += 1
                    w.confidence_sum += confidence
                    if confidence < LOW_CONFIDENCE:
                        w.low_confidence += 1
                    counts[min(top, max(0, int(confidence * CONFIDENCE_BINS)))] += 1
                    class_counts[index] = class_counts.get(index, 0) + 1
            elif output_counts is not None:
                w.predictions += int(output_counts.sum())
                if w.output_counts is None or w.output_counts.shape != output_counts.shape:
                    w.output_counts = output_counts.copy()
                else:
                    w.output_counts += output_counts
            if model_sha is not None:
                self._usage.setdefault(model_sha, ModelUsage()).record(latency_ms, invoke_ms, cpu_ms)

    def record_error(self, kind: str, nonfinite: bool = False, model_sha: str | None = None) -> None:
        with self._lock:
            w = self._window
            w.requests += 1
            w.errors[kind] = w.errors.get(kind, 0) + 1
            self._totals[model_sha, kind] = self._totals.get((model_sha, kind), 0) + 1
            if nonfinite:
                w.nonfinite_inputs += 1
            if model_sha is not None and kind == "inference":
                usage = self._usage.setdefault(model_sha, ModelUsage())
                usage.requests += 1
                usage.errors += 1

    def usage(self, model_sha: str) -> ModelUsage:
        """A snapshot of what ``model_sha`` served in this process."""
        with self._lock:
            return self._usage.get(model_sha, ModelUsage()).copy()

    def totals(self) -> dict[tuple[str | None, str], int]:
        """Requests since start by (model sha256, or None when none was chosen yet; outcome:
        ``ok`` or the error kind)."""
        with self._lock:
            return dict(self._totals)

    def usages(self) -> dict[str, ModelUsage]:
        """A snapshot of what every model served in this process."""
        with self._lock:
            return {sha: usage.copy() for sha, usage in self._usage.items()}

    def take(self) -> _Window:
        with self._lock:
            window, self._window = self._window, _Window()
        return window


def prediction_health(window: _Window, baseline: BaselineStats | None) -> PredictionHealth | None:
    """The window's prediction-health block, compared with the manifest's baseline when it has one."""
    if not (window.predictions or window.nonfinite_inputs or window.instances):
        return None
    n = window.predictions
    counts: list[int] | None = None
    drift: float | None = None
    if window.class_counts:
        size = max(window.class_counts) + 1
        if baseline is not None and baseline.class_frequencies:
            size = max(size, len(baseline.class_frequencies))
        counts = [window.class_counts.get(i, 0) for i in range(size)]
        if baseline is not None and baseline.class_frequencies:
            drift = psi(counts, baseline.class_frequencies)
    output_counts = None
    if window.output_counts is not None:
        output_counts = [int(c) for c in window.output_counts]
        if baseline is not None and baseline.output_histogram is not None:
            drift = psi(output_counts, baseline.output_histogram.counts)
    tests = _drift_tests(window, counts, output_counts, baseline)
    return PredictionHealth(
        predictions=n,
        mean_confidence=round(window.confidence_sum / n, 3) if n and window.class_counts else None,
        confidence_p05=confidence_p05(window.confidence_counts, CONFIDENCE_BINS),
        low_confidence_share=round(window.low_confidence / n, 3) if n and window.class_counts else None,
        class_counts=counts,
        output_histogram_counts=output_counts,
        drift_psi=round(drift, 3) if drift is not None else None,
        out_of_range_share=round(window.out_of_range / window.instances, 3)
        if window.instances and baseline is not None and baseline.input_ranges
        else None,
        nonfinite_inputs=window.nonfinite_inputs,
        **tests,
    )


def _drift_tests(
    window: _Window, counts: list[int] | None, output_counts: list[int] | None, baseline: BaselineStats | None
) -> dict[str, float | int | None]:
    """The window's drift tests against the baseline (``agent.drift``): only the members measured."""
    if baseline is None:
        return {}
    tests: dict[str, float | int | None] = {}
    if counts is not None and baseline.class_frequencies:
        tests["output_drift"] = output_drift(counts, baseline.class_frequencies, baseline.samples)
    elif output_counts is not None and baseline.output_histogram is not None:
        tests["output_drift"] = output_drift(
            output_counts, baseline.output_histogram.counts, baseline.samples
        )
    if window.features is not None and baseline.input_features is not None:
        found = input_drift(window.features, baseline.input_features, baseline.samples)
        if found is not None:
            tests |= {
                "input_drift": found.significance,
                "drift_feature": found.feature,
                "stuck_features": found.stuck,
            }
    return tests


def encode_window(message: TelemetryWindow) -> bytes:
    """The wire form: the compact JSON of ``protocol.telemetry_wire`` (short member names, times
    as Unix seconds, no members that equal the schema's defaults); parsing restores the window.
    ``schema_version`` and ``kind`` are always written under their own names: a reader must never
    have to guess which schema a message was written with."""
    return encode_compact(message)


class Telemetry:
    """Builds and publishes one ``TelemetryWindow`` per call of ``publish_window``."""

    def __init__(  # noqa: PLR0913 - the sources of one window (usage, resources, clock, sink), injected for tests
        self,
        device_id: str,
        topics: Topics,
        sink: Sink,
        *,
        metrics: RequestMetrics,
        state_dir: Path,
        model_ref: Callable[[], ModelRef | None],
        dropped: Callable[[], int] = lambda: 0,
        baseline: Callable[[], BaselineStats | None] = lambda: None,
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
        self.baseline = baseline
        self.monotonic = monotonic
        self.wall = wall
        self.resources = resources
        self._seq_path = state_dir / "telemetry.json"
        self._lock = threading.Lock()
        self._started = monotonic()
        self._window_start_wall = wall().replace(microsecond=0)
        self._seq = self._load_seq()
        guarded(lambda: psutil.cpu_percent(interval=None), 0.0)  # start the CPU measurement window

    def _load_seq(self) -> int:
        try:
            return int(json.loads(self._seq_path.read_text())["next_seq"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def build_window(self) -> TelemetryWindow:
        window = self.metrics.take()
        end = self.wall().replace(microsecond=0)  # whole seconds: enough for windows, shorter
        prediction = prediction_health(window, self.baseline())
        model = self.model_ref()
        message = TelemetryWindow(
            device_id=self.device_id,
            seq=self._seq,
            window_start=self._window_start_wall,
            window_end=end,
            # Name and version only: the bundle's sha256 (64 characters in every window) is in the
            # retained status and the update events, and the fleet files a window by name and version.
            model=ModelRef(name=model.name, version=model.version) if model is not None else None,
            requests=window.requests,
            errors=dict(window.errors),
            latency_ms=window.latency.summary(),
            resources=self.resources(self.state_dir),
            uptime_s=round(max(0.0, self.monotonic() - self._started)),
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
        self.sink.publish(self.topic, encode_window(message), 1, False)
        return message
