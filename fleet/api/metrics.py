"""``GET /metrics``: Prometheus text format, built at scrape time from the ingester and the database.

Fleet-wide series: the ingester's counters, device presence, devices per model and version, error
ratio and drift per model and version (from each device's newest window, if recent), the latency
histogram (``fleet.api.latency``), open alerts, active rollouts and ``edgefleet_build_info``.
Per-device series (last seen, online) only with ``metrics.per_device``, for at most
``metrics.per_device_max`` devices. Every query is bounded: one row per device, one index lookup per
device for its newest window, and the windows stored since the previous scrape.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from fleet.api.context import FleetContext, get_context
from fleet.api.latency import LatencyHistograms
from fleet.api.security import Viewer
from fleet.storage import scrape
from fleet.storage.times import now
from protocol.version import __version__

router = APIRouter(tags=["system"])
Context = Annotated[FleetContext, Depends(get_context)]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_MODEL = ("none", "")


class _FleetCollector(Collector):
    def __init__(self, context: FleetContext, latency: LatencyHistograms) -> None:
        self.context = context
        self.latency = latency

    def collect(self) -> Iterator[Metric]:
        yield from self._ingest()
        info = GaugeMetricFamily("edgefleet_build_info", "the fleet's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        with self.context.engine.begin() as conn:
            devices = scrape.all_devices(conn)
            windows = scrape.newest_windows(conn)
            open_alerts = scrape.open_alert_count(conn)
            active = scrape.active_rollout_count(conn)
        yield from self._devices(devices)
        yield from self._models(windows)
        self.latency.advance(self.context.engine)
        yield from self.latency.collect()
        yield GaugeMetricFamily("edgefleet_alerts_open", "open alerts", open_alerts)
        yield GaugeMetricFamily("edgefleet_rollouts_active", "running or paused rollouts", active)
        if self.context.metrics.per_device:
            yield from self._per_device(devices)

    def _ingest(self) -> Iterator[Metric]:
        stats = self.context.link.stats()
        for name, value, text in (
            ("received", stats.received, "MQTT messages received"),
            ("stored", stats.stored, "device messages stored"),
            ("duplicates", stats.duplicates, "redelivered messages recognised as duplicates"),
            ("acked", stats.acked, "QoS 1 messages acknowledged after commit"),
        ):
            yield CounterMetricFamily(f"edgefleet_ingest_{name}", text, value=value)
        dead = CounterMetricFamily(
            "edgefleet_ingest_dead_lettered", "dead-lettered messages", labels=["reason"]
        )
        for reason, count in sorted(stats.dead_lettered.items()):
            dead.add_metric([reason], count)
        yield dead
        yield GaugeMetricFamily(
            "edgefleet_ingest_queue_depth", "messages waiting for the writer", stats.queue_depth
        )
        yield GaugeMetricFamily(
            "edgefleet_ingest_connected", "1 when connected to the broker", int(stats.connected)
        )

    def _devices(self, devices: list[scrape.DeviceRow]) -> Iterator[Metric]:
        online = sum(1 for d in devices if d.presence == "online")
        presence = GaugeMetricFamily("edgefleet_devices", "known devices by presence", labels=["presence"])
        presence.add_metric(["online"], online)
        presence.add_metric(["offline"], len(devices) - online)
        yield presence
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for d in devices:
            counts[(d.model_name, d.model_version or "") if d.model_name else NO_MODEL] += 1
        models = GaugeMetricFamily(
            "edgefleet_devices_by_model",
            "devices running each model version (model none: no model yet)",
            labels=["model", "version"],
        )
        for (model, version), count in sorted(counts.items()):
            models.add_metric([model, version], count)
        yield models

    def _models(self, windows: list[scrape.WindowRow]) -> Iterator[Metric]:
        recent = now() - timedelta(seconds=self.context.metrics.stale_after_s)
        requests: dict[tuple[str, str], int] = defaultdict(int)
        errors: dict[tuple[str, str], int] = defaultdict(int)
        devices: dict[tuple[str, str], int] = defaultdict(int)
        drift: dict[tuple[str, str], list[float]] = defaultdict(list)
        for w in windows:
            if w.window_end < recent or w.model_name is None or w.model_version is None:
                continue
            key = (w.model_name, w.model_version)
            requests[key] += w.requests
            devices[key] += 1
            errors[key] += w.errors
            if w.drift_psi is not None:
                drift[key].append(w.drift_psi)
        labels = ["model", "version"]
        ratio = GaugeMetricFamily(
            "edgefleet_model_error_ratio",
            "failed share of requests in the newest window of each device running the model",
            labels=labels,
        )
        reporting = GaugeMetricFamily(
            "edgefleet_model_devices_reporting", "devices whose newest window is recent", labels=labels
        )
        for key, total in sorted(requests.items()):
            reporting.add_metric(list(key), devices[key])
            if total:
                ratio.add_metric(list(key), errors[key] / total)
        mean_drift = GaugeMetricFamily(
            "edgefleet_model_drift_psi", "mean drift PSI over the devices' newest windows", labels=labels
        )
        max_drift = GaugeMetricFamily(
            "edgefleet_model_drift_psi_max",
            "largest drift PSI among the devices' newest windows",
            labels=labels,
        )
        for key, values in sorted(drift.items()):
            mean_drift.add_metric(list(key), sum(values) / len(values))
            max_drift.add_metric(list(key), max(values))
        yield from (ratio, reporting, mean_drift, max_drift)

    def _per_device(self, devices: list[scrape.DeviceRow]) -> Iterator[Metric]:
        cap = self.context.metrics.per_device_max
        shown = devices[:cap]  # the most recently seen first
        seen = GaugeMetricFamily(
            "edgefleet_device_last_seen_timestamp_seconds",
            "when the device last reported (Unix time)",
            labels=["device"],
        )
        up = GaugeMetricFamily("edgefleet_device_online", "1 when the device is online", labels=["device"])
        for d in shown:
            seen.add_metric([d.device_id], d.last_seen.timestamp())
            up.add_metric([d.device_id], int(d.presence == "online"))
        yield from (seen, up)
        yield GaugeMetricFamily(
            "edgefleet_metrics_devices_omitted",
            f"devices left out of the per-device series (more than metrics.per_device_max = {cap})",
            len(devices) - len(shown),
        )


def _render(context: FleetContext, latency: LatencyHistograms) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FleetCollector(context, latency))
    return generate_latest(registry)


def _histograms(request: Request) -> LatencyHistograms:
    """One per app: the histogram's counts must survive from one scrape to the next."""
    state = request.app.state
    if getattr(state, "latency_histograms", None) is None:
        state.latency_histograms = LatencyHistograms()
    histograms: LatencyHistograms = state.latency_histograms
    return histograms


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, context: Context, _who: Viewer) -> Response:
    body = await run_in_threadpool(_render, context, _histograms(request))
    return Response(body, media_type=CONTENT_TYPE)
