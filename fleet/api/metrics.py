"""``GET /metrics``: Prometheus text format, built at scrape time from the ingester and the database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from fleet.api.context import FleetContext, get_context
from fleet.api.security import Viewer
from fleet.summary import summarize

router = APIRouter(tags=["system"])
Context = Annotated[FleetContext, Depends(get_context)]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _FleetCollector(Collector):
    def __init__(self, context: FleetContext) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
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
        summary, _devices = summarize(self.context.engine)
        presence = GaugeMetricFamily("edgefleet_devices", "known devices by presence", labels=["presence"])
        presence.add_metric(["online"], summary.online)
        presence.add_metric(["offline"], summary.offline)
        yield presence
        models = GaugeMetricFamily(
            "edgefleet_devices_by_model", "devices running each model", labels=["model"]
        )
        for model, count in summary.models.items():
            models.add_metric([model], count)
        yield models
        yield GaugeMetricFamily("edgefleet_alerts_open", "open alerts", summary.open_alerts)
        yield GaugeMetricFamily(
            "edgefleet_rollouts_active", "running or paused rollouts", summary.active_rollouts
        )


def _render(context: FleetContext) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FleetCollector(context))
    return generate_latest(registry)


@router.get("/metrics", response_class=Response)
async def metrics(context: Context, _who: Viewer) -> Response:
    return Response(await run_in_threadpool(_render, context), media_type=CONTENT_TYPE)
