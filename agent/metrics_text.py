"""``GET /metrics``: the agent's figures in the Prometheus text exposition format (version 0.0.4).

Written by hand rather than with ``prometheus_client``: the agent keeps its footprint small, and
everything here is a snapshot of counters ``RequestMetrics`` keeps anyway. Every counter and
histogram is cumulative since the process started; the telemetry windows (reset each interval)
are not read.

The histograms reuse the fixed log buckets of ``agent.usage``; a cumulative count at one of
those edges is exact, so every ``BUCKET_STRIDE``-th edge is served (4 buckets per decade) to keep
a scrape small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

from agent.resources import guarded
from agent.telemetry import RequestMetrics
from agent.usage import LatencyHistogram
from protocol.schema import ModelRef
from protocol.update_state import UpdateState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_PER_DECADE = 4
"""Buckets served per decade of the underlying edges (latency has 20, invoke 40 per decade)."""


@dataclass
class MetricsSources:
    """What one scrape reads; callables so the page is always current."""

    metrics: RequestMetrics
    version: str
    model_ref: Callable[[str], ModelRef | None]
    """The name and version of a model by its sha256 (None: no longer known)."""
    update_state: Callable[[], str]
    outbox_queued: Callable[[], int] | None = None
    process: psutil.Process = field(default_factory=psutil.Process)

    def page(self) -> tuple[str, bytes]:
        """The content type and body of the answer to ``GET /metrics``."""
        return CONTENT_TYPE, render(self).encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _header(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def _histogram(lines: list[str], name: str, hist: LatencyHistogram, stride: int, **labels: str) -> None:
    """Cumulative buckets in seconds: ``counts[i]`` holds the values in (edges[i-1], edges[i]]."""
    seen = 0
    for index, count in enumerate(hist.counts[: len(hist.edges)]):
        seen += count
        if index % stride == stride - 1:
            le = f"{hist.edges[index] / 1000:.4g}"
            lines.append(f"{name}_bucket{_labels(**labels, le=le)} {seen}")
    lines.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {hist.total}")
    lines.append(f"{name}_sum{_labels(**labels)} {_number(hist.sum_ms / 1000)}")
    lines.append(f"{name}_count{_labels(**labels)} {hist.total}")


def _stride(edges: list[float]) -> int:
    """Edges between two served buckets: the underlying edges per decade over ``_PER_DECADE``."""
    per_decade = round(1 / math.log10(edges[1] / edges[0]))
    return max(1, per_decade // _PER_DECADE)


def _model_labels(sha: str | None, model_ref: Callable[[str], ModelRef | None]) -> dict[str, str]:
    if sha is None:
        return {"model": "", "version": ""}  # refused before a model was chosen for it
    ref = model_ref(sha)
    if ref is None:
        return {"model": "", "version": f"sha256:{sha[:12]}"}
    return {"model": ref.name, "version": ref.version}


def render(sources: MetricsSources) -> str:
    lines: list[str] = []
    name = "edgefleet_agent_build_info"
    _header(lines, name, "gauge", "The agent's version (always 1).")
    lines.append(f"{name}{_labels(version=sources.version)} 1")

    name = "edgefleet_agent_requests_total"
    _header(lines, name, "counter", "Predict requests since start by model and outcome (ok or error kind).")
    totals = sources.metrics.totals()
    for sha, outcome in sorted(totals, key=lambda key: (key[0] or "", key[1])):
        count = totals[sha, outcome]
        lines.append(f"{name}{_labels(**_model_labels(sha, sources.model_ref), outcome=outcome)} {count}")

    usages = sorted(sources.metrics.usages().items())
    _histograms(
        lines,
        "edgefleet_agent_request_latency_seconds",
        "Latency of successful predict requests as the client saw them (parsing, queueing, inference).",
        ((sha, usage.latency) for sha, usage in usages),
        sources.model_ref,
    )
    _histograms(
        lines,
        "edgefleet_agent_invoke_seconds",
        "The model's own invoke time per instance of each successful request (queueing excluded).",
        ((sha, usage.invoke) for sha, usage in usages if usage.timed),
        sources.model_ref,
    )

    name = "edgefleet_agent_update_state"
    _header(lines, name, "gauge", "The update state machine's state (1 for the current one).")
    current = str(sources.update_state())
    for state in UpdateState:
        lines.append(f"{name}{_labels(state=state.value)} {int(state.value == current)}")

    if sources.outbox_queued is not None:
        name = "edgefleet_agent_outbox_messages"
        _header(lines, name, "gauge", "MQTT messages waiting in the outbox for the broker.")
        lines.append(f"{name} {sources.outbox_queued()}")

    _process(lines, sources.process)
    return "\n".join(lines) + "\n"


def _histograms(
    lines: list[str],
    name: str,
    help_text: str,
    hists: Iterable[tuple[str, LatencyHistogram]],
    model_ref: Callable[[str], ModelRef | None],
) -> None:
    _header(lines, name, "histogram", help_text)
    for sha, hist in hists:
        _histogram(lines, name, hist, _stride(hist.edges), **_model_labels(sha, model_ref))


def _process(lines: list[str], process: psutil.Process) -> None:
    """The names ``prometheus_client``'s process collector uses, so existing dashboards fit."""
    readings = (
        ("process_resident_memory_bytes", "gauge", "Resident memory of the agent process.",
         lambda: process.memory_info().rss),
        ("process_cpu_seconds_total", "counter", "CPU time (user and system) of the agent process.",
         lambda: sum(process.cpu_times()[:2])),
        ("process_start_time_seconds", "gauge", "When the agent process started (Unix time).",
         process.create_time),
    )  # fmt: skip
    for name, kind, help_text, read in readings:
        value = guarded(read, None)
        if value is not None:  # a reading psutil cannot take here is left out
            _header(lines, name, kind, help_text)
            lines.append(f"{name} {_number(value)}")
