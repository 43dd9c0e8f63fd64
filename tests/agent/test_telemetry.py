"""Telemetry windows: the aggregation logic with injected clocks, and a window on the real broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from agent.app import Agent
from agent.config import load_config
from agent.telemetry import LatencyHistogram, RequestMetrics, Telemetry, sample_temperature
from edgefleet.mosquitto import MosquittoBroker
from protocol.messages import ResourceUsage, TelemetryWindow
from protocol.topics import Topics
from tests.agent.mqtt_watch import Watcher
from tests.agent.peer import FleetPeer
from tests.support.agent import DEVICE, Bundles
from tests.support.toml import config_toml
from tests.support.wait import wait_until


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.sent.append((topic, payload, qos, retain))


def test_histogram_percentiles_are_close_and_bounded() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 101):
        histogram.record(float(ms))
    summary = histogram.summary()
    assert summary is not None
    assert 50 <= summary.p50 <= 50 * 1.13
    assert 95 <= summary.p95 <= 100 and 99 <= summary.p99 <= 100
    assert summary.max == 100
    assert LatencyHistogram().summary() is None


def test_window_with_injected_clocks(tmp_path: Path) -> None:
    now = [100.0]
    wall = [datetime(2030, 1, 1, tzinfo=UTC)]
    sink, metrics = ListSink(), RequestMetrics()
    fixed = ResourceUsage(cpu_percent=1, process_rss_bytes=1, memory_used_percent=1, memory_available_bytes=1)
    telemetry = Telemetry(
        DEVICE,
        Topics(),
        sink,
        metrics=metrics,
        state_dir=tmp_path,
        model_ref=lambda: None,
        dropped=lambda: 2,
        monotonic=lambda: now[0],
        wall=lambda: wall[0],
        resources=lambda _: fixed,
    )
    metrics.record_success(
        3.0, classes=np.array([1, 1]), confidences=np.array([0.9, 0.4], dtype=np.float32), instances=2
    )
    metrics.record_error("bad_request", nonfinite=True)
    now[0] += 60
    wall[0] += timedelta(seconds=60)
    first = telemetry.publish_window()
    assert (first.seq, first.requests, first.errors, first.uptime_s) == (0, 2, {"bad_request": 1}, 60)
    assert first.dropped_messages == 2 and first.latency_ms is not None and first.latency_ms.max == 3.0
    assert first.prediction is not None
    assert first.prediction.class_counts == [0, 2] and first.prediction.low_confidence_share == 0.5
    assert first.prediction.nonfinite_inputs == 1
    topic, payload, qos, retain = sink.sent[0]
    assert topic == Topics().telemetry(DEVICE) and qos == 1 and not retain
    assert TelemetryWindow.model_validate_json(payload) == first
    second = telemetry.publish_window()
    assert second.seq == 1 and second.requests == 0 and second.latency_ms is None
    assert second.window_start == first.window_end
    # seq survives a restart of the agent (same state directory)
    again = Telemetry(
        DEVICE,
        Topics(),
        sink,
        metrics=metrics,
        state_dir=tmp_path,
        model_ref=lambda: None,
        resources=lambda _: fixed,
    )
    assert again.publish_window().seq == 2


def test_temperature_copes_with_missing_or_failing_sensors(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> dict[str, object]:
        raise OSError("sysfs read failed")

    monkeypatch.setattr(psutil, "sensors_temperatures", boom, raising=False)
    assert sample_temperature() is None
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)
    assert sample_temperature() is None
    monkeypatch.delattr(psutil, "sensors_temperatures", raising=False)
    assert sample_temperature() is None


def test_window_on_the_real_broker_after_requests(
    tmp_path: Path, broker: MosquittoBroker, fleet_peer: FleetPeer, trusted_dir: Path, bundles: Bundles
) -> None:
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    path = tmp_path / "agent.toml"
    path.write_text(config_toml(tmp_path / "state", trusted_dir, fleet_peer.url, mqtt_port=broker.port))
    watcher = Watcher(broker.host, broker.port, Topics().telemetry(DEVICE))
    agent = Agent(load_config(path)).start()
    try:
        assert agent.api is not None and agent.mqtt is not None and agent.telemetry is not None
        wait_until(lambda: agent.holder.current is not None, "v1 installed by the start-up check", 20)
        assert agent.mqtt.connected.wait(10)
        for row in bundles.samples_x[:5]:
            response = requests.post(f"{agent.api.url}/v1/predict", json={"inputs": row.tolist()}, timeout=5)
            assert response.status_code == 200
        requests.post(f"{agent.api.url}/v1/predict", data=b"nope", timeout=5)
        agent.telemetry.publish_window()
        window = watcher.wait_for(lambda m: m["requests"] > 0)
    finally:
        agent.stop()
        watcher.close()
    assert window["device_id"] == DEVICE and window["requests"] == 6
    assert window["errors"] == {"bad_request": 1}
    assert window["latency_ms"]["p50"] > 0 and window["latency_ms"]["max"] >= window["latency_ms"]["p99"]
    assert window["model"]["version"] == "1.0.0"
    assert window["prediction"]["predictions"] == 5 and sum(window["prediction"]["class_counts"]) == 5
    resources = window["resources"]
    assert resources["process_rss_bytes"] > 0 and resources["disk_free_bytes"] > 0


def test_psi_is_zero_for_the_baseline_and_grows_with_drift() -> None:
    from agent.telemetry import psi

    assert psi([10, 20, 70], [0.1, 0.2, 0.7]) == pytest.approx(0.0, abs=1e-9)
    small, large = psi([12, 20, 68], [0.1, 0.2, 0.7]), psi([70, 20, 10], [0.1, 0.2, 0.7])
    assert small is not None and large is not None and 0 < small < 0.1 and large > 0.25
    assert psi([0, 0, 0], [0.5, 0.5, 0]) is None
    assert psi([5, 0, 5], [0.5, 0.5, 0.0]) is not None  # empty bins are floored, not infinite


def test_prediction_health_against_the_manifest_baseline(
    bundles: Bundles, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Real requests through the API: drift, confidence, out-of-range and non-finite inputs."""
    from agent.http_api import InferenceAPI
    from agent.serving import ActiveModel, ModelHolder
    from agent.store import ModelStore
    from agent.telemetry import prediction_health
    from tests.support.agent import stage_directly

    state = tmp_path / "state"
    sha = stage_directly(state, bundles.v1, signing_keys[1])
    model = ActiveModel.load(ModelStore(state).read(sha), runtime="tflite-runtime")
    assert model.manifest.baseline is not None
    holder, metrics = ModelHolder(), RequestMetrics()
    holder.swap(model)
    api = InferenceAPI("127.0.0.1", 0, holder, metrics).start()
    url = f"{api.url}/v1/predict"
    try:
        # The baseline's own inputs: no drift, nothing out of range.
        requests.post(url, json={"inputs": bundles.samples_x.tolist()}, timeout=10).raise_for_status()
        same = prediction_health(metrics.take(), model.manifest.baseline)
        assert same is not None and same.predictions == len(bundles.samples_x)
        assert same.drift_psi is not None and same.drift_psi < 0.01
        assert same.out_of_range_share == 0.0
        assert same.mean_confidence is not None and same.confidence_p05 is not None
        assert same.confidence_p05 <= same.mean_confidence
        # The same instance over and over, brightened past the baseline's range, and one NaN.
        bright = np.repeat(bundles.samples_x[:1] * 3 + 1, 16, axis=0)
        requests.post(url, json={"inputs": bright.tolist()}, timeout=10).raise_for_status()
        nan = bundles.samples_x[0].tolist()
        nan[0][0][0] = float("nan")
        assert requests.post(url, data=json.dumps({"inputs": nan}), timeout=10).status_code == 400
        drifted = prediction_health(metrics.take(), model.manifest.baseline)
    finally:
        api.stop()
    assert drifted is not None and drifted.out_of_range_share == 1.0
    assert drifted.drift_psi is not None and drifted.drift_psi > 0.25
    assert drifted.class_counts is not None and max(drifted.class_counts) == 16
    assert drifted.nonfinite_inputs == 1


def test_the_compact_wire_form_still_names_its_schema() -> None:
    from datetime import UTC, datetime

    from agent.telemetry import encode_window
    from protocol.messages import ResourceUsage, TelemetryWindow, parse_message

    now = datetime.now(UTC)
    window = TelemetryWindow(
        device_id="d1", seq=3, window_start=now, window_end=now, requests=0,
        resources=ResourceUsage(cpu_percent=0, process_rss_bytes=1, memory_used_percent=1,
                                memory_available_bytes=1),
        uptime_s=1,
    )  # fmt: skip
    payload = encode_window(window)
    assert payload.startswith(b'{"schema_version":1,"kind":"telemetry",')
    assert parse_message(TelemetryWindow, payload) == window
