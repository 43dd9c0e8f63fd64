"""``/metrics`` of a running fleet, parsed with prometheus_client's own parser: per model and version
latency histogram, error and drift gauges, presence, per-device series behind their option, build info."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from fleet.api.latency import BUCKETS_S, Series, mean, quantile_points, share_at_or_below
from fleet.config import MetricsSettings
from protocol.messages import LatencySummary, PredictionHealth, Presence, ResourceUsage, TelemetryWindow
from protocol.schema import ModelRef
from protocol.topics import Topics
from protocol.version import __version__
from tests.fleet.mqtt_helpers import TestClient, status, wait_for
from tests.support.fleet import RunningFleet

TOPICS = Topics()
V1 = ModelRef(name="digits", version="1.0.0")
V2 = ModelRef(name="digits", version="2.0.0")


def window(device_id: str, seq: int, model: ModelRef, errors: int, drift: float) -> bytes:
    """A window that ended a moment ago: 120 requests, p50 10 ms, p95 20 ms, p99 40 ms."""
    end = datetime.now(UTC) - timedelta(seconds=5 * (3 - seq))
    return (
        TelemetryWindow(
            device_id=device_id,
            seq=seq,
            window_start=end - timedelta(seconds=10),
            window_end=end,
            model=model,
            requests=120,
            errors={"inference": errors} if errors else {},
            latency_ms=LatencySummary(p50=10, p95=20, p99=40, max=50),
            resources=ResourceUsage(
                cpu_percent=10, process_rss_bytes=1, memory_used_percent=10, memory_available_bytes=1
            ),
            uptime_s=10,
            prediction=PredictionHealth(predictions=120, drift_psi=drift),
        )
        .model_dump_json()
        .encode()
    )


def scrape(fleet: RunningFleet) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}."""
    response = fleet.get("/metrics")
    assert response.status_code == 200, response.text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


def test_metrics_per_model_version_presence_and_build_info(fleet: RunningFleet, device: TestClient) -> None:
    device.publish(TOPICS.status("cam-1"), status("cam-1", model=V1), retain=True)
    device.publish(TOPICS.status("cam-2"), status("cam-2", model=V2), retain=True)
    device.publish(TOPICS.status("cam-3"), status("cam-3", presence=Presence.OFFLINE), retain=True)
    wait_for(lambda: len(fleet.json("/api/v1/devices")) == 3)
    before = scrape(fleet)  # the histogram counts windows stored from the first scrape on
    assert "edgefleet_device_request_latency_seconds_count" not in before
    assert before["edgefleet_build_info"] == {labels(version=__version__): 1.0}

    device.publish(TOPICS.telemetry("cam-1"), window("cam-1", 0, V1, errors=0, drift=0.1))
    device.publish(TOPICS.telemetry("cam-1"), window("cam-1", 1, V1, errors=6, drift=0.3))
    device.publish(TOPICS.telemetry("cam-2"), window("cam-2", 0, V2, errors=12, drift=0.5))
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 6)
    after = scrape(fleet)

    one, two = labels(model="digits", version="1.0.0"), labels(model="digits", version="2.0.0")
    assert after["edgefleet_devices"] == {labels(presence="online"): 2.0, labels(presence="offline"): 1.0}
    assert after["edgefleet_devices_by_model"] == {one: 1.0, two: 1.0, labels(model="none", version=""): 1.0}
    # Two windows of 120 requests on 1.0.0: 50 % at or below p50 = 10 ms, 96 % at or below 25 ms
    # (95 % at p95 = 20 ms, 99 % at p99 = 40 ms, linear between), all of them by 50 ms.
    buckets = after["edgefleet_device_request_latency_seconds_bucket"]
    assert buckets[labels(model="digits", version="1.0.0", le="0.005")] == 2 * 30
    assert buckets[labels(model="digits", version="1.0.0", le="0.01")] == 2 * 60
    assert buckets[labels(model="digits", version="1.0.0", le="0.025")] == 2 * 115
    assert buckets[labels(model="digits", version="1.0.0", le="0.05")] == 2 * 120
    assert buckets[labels(model="digits", version="2.0.0", le="+Inf")] == 120
    assert after["edgefleet_device_request_latency_seconds_count"] == {one: 240.0, two: 120.0}
    total = after["edgefleet_device_request_latency_seconds_sum"][one]
    assert 240 * 0.010 < total < 240 * 0.020  # mean between p50 and p95
    # Error ratio and drift from each device's newest window.
    assert after["edgefleet_model_error_ratio"] == {one: pytest.approx(0.05), two: pytest.approx(0.1)}
    assert after["edgefleet_model_drift_psi"] == {one: pytest.approx(0.3), two: pytest.approx(0.5)}
    assert after["edgefleet_model_devices_reporting"] == {one: 1.0, two: 1.0}
    assert "edgefleet_ingest_stored_total" in after
    assert "edgefleet_device_last_seen_timestamp_seconds" not in after  # off by default

    # The histogram is cumulative: a later scrape adds only the new windows.
    device.publish(TOPICS.telemetry("cam-2"), window("cam-2", 1, V2, errors=0, drift=0.1))
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 7)
    again = scrape(fleet)
    assert again["edgefleet_device_request_latency_seconds_count"] == {one: 240.0, two: 240.0}


def test_per_device_series_are_optional_and_capped(fleet: RunningFleet, device: TestClient) -> None:
    for name in ("cam-1", "cam-2", "cam-3"):
        device.publish(TOPICS.status(name), status(name), retain=True)
    wait_for(lambda: len(fleet.json("/api/v1/devices")) == 3)
    fleet.server.context.metrics = MetricsSettings(per_device=True, per_device_max=2)
    samples = scrape(fleet)
    seen = samples["edgefleet_device_last_seen_timestamp_seconds"]
    assert len(seen) == 2 and samples["edgefleet_metrics_devices_omitted"] == {(): 1.0}
    last_seen = {d["device_id"]: d["last_seen"] for d in fleet.json("/api/v1/devices")}
    for (key,), value in seen.items():
        assert abs(value - datetime.fromisoformat(last_seen[key[1]]).timestamp()) < 1e-3
    assert set(samples["edgefleet_device_online"].values()) == {1.0}


def test_per_device_cap_has_a_documented_ceiling() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 10000"):
        MetricsSettings(per_device=True, per_device_max=10_001)


def test_quantile_estimate_is_monotone_and_keeps_the_reported_quantiles() -> None:
    points = quantile_points(10, 20, 40)
    shares = [share_at_or_below(points, bound) for bound in BUCKETS_S]
    assert shares == sorted(shares) and shares[-1] == 1.0
    assert share_at_or_below(points, 0.010) == pytest.approx(0.5)
    assert share_at_or_below(points, 0.020) == pytest.approx(0.95)
    assert share_at_or_below(points, 0.040) == pytest.approx(0.99)
    assert 0.010 < mean(points) < 0.020
    disordered = quantile_points(30, 20, 10)  # a bad report must not make the buckets decrease
    assert [x for x, _ in disordered] == sorted(x for x, _ in disordered)
    series = Series()
    series.add(0, 10, 20, 40)
    assert series.count == 0 and series.buckets == [0] * len(BUCKETS_S)
