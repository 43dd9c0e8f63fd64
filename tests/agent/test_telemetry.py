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
from protocol.schema import ModelRef
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
    assert window["model"] == {"name": "digits", "version": "1.0.0"}  # the sha is in the status
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


# -- the wire size of a busy window ------------------------------------------------------------

DAILY_BUDGET_BYTES = 800_000
"""Telemetry on the wire per device per day at 60 s windows, MQTT framing included."""

BUSY_DEVICE = "pi-warehouse-0042"
"""Longer than most ids: the topic is in every PUBLISH."""


def _mqtt_bytes_per_day(topic: str, payload: int, interval_s: float = 60, keepalive_s: float = 30) -> int:
    """What one window costs on MQTT 3.1.1 at QoS 1, per day: PUBLISH (fixed header with its
    remaining-length varint, topic length + topic, packet id, payload) and the broker's 4-byte
    PUBACK per window, plus a PINGREQ/PINGRESP pair (2 + 2 bytes) per keepalive; TCP/IP not counted."""
    remaining = 2 + len(topic.encode()) + 2 + payload
    varint = 1 if remaining < 128 else 2 if remaining < 16_384 else 3
    publish = 1 + varint + remaining
    return int(86_400 / interval_s * (publish + 4) + 86_400 / keepalive_s * 4)


def _busy_window(tmp_path: Path) -> tuple[Telemetry, ListSink, ModelRef]:
    """The real agent telemetry after a busy minute: a 10-class classifier with every
    prediction-health field set, several error kinds, dropped messages, a temperature sensor."""
    from agent.drift import FeatureBatch
    from agent.resources import sample_resources
    from converter.baseline import input_feature_stats
    from protocol.features import padded_edges
    from protocol.manifest import BaselineStats, FeatureRange

    rng = np.random.default_rng(7)
    metrics = RequestMetrics()
    model = ModelRef(name="warehouse-classifier", version="12.3.0", sha256="0123456789abcdef" * 4)
    features = input_feature_stats(rng.random((500, 40)).astype(np.float32))  # > 32: no joint test
    assert features is not None
    edges, mean = padded_edges(features.edges), np.asarray(features.mean)
    inputs = rng.random((6_000, 40)) * 1.3  # drifted: every drift member is set, with its widest value
    for n in range(6_000):
        row = inputs[n : n + 1]
        metrics.record_success(
            float(rng.lognormal(1.5, 0.6)),
            model.sha256,
            classes=rng.integers(0, 10, size=1),
            confidences=rng.uniform(0.2, 1.0, size=1).astype(np.float32),
            instances=1,
            out_of_range=int(n % 41 == 0),
            features=FeatureBatch(row, mean, edges),
        )
    for n in range(23):
        metrics.record_error("bad_request", nonfinite=n < 5)
    metrics.record_error("too_large")
    metrics.record_error("inference", model_sha=model.sha256)
    baseline = BaselineStats(
        samples=1000,
        class_frequencies=[0.1] * 10,
        input_ranges=[FeatureRange(min=0.0, max=1.0, mean=0.5)],
        input_features=features,
    )

    def resources(state_dir: Path) -> ResourceUsage:
        real = sample_resources(state_dir)  # a board has a sensor; this machine may not
        return real.model_copy(update={"temperature_c": 61.4, "cpu_percent": 187.5})

    now, wall = [1_000.0], [datetime(2030, 6, 1, 12, 0, tzinfo=UTC)]
    sink = ListSink()
    telemetry = Telemetry(
        BUSY_DEVICE,
        Topics(),
        sink,
        metrics=metrics,
        state_dir=tmp_path,
        model_ref=lambda: model,
        dropped=lambda: 17,
        baseline=lambda: baseline,
        monotonic=lambda: now[0],
        wall=lambda: wall[0],
        resources=resources,
    )
    now[0] += 40 * 86_400  # up 40 days, and this window a minute long
    wall[0] += timedelta(seconds=60)
    return telemetry, sink, model


def test_a_busy_window_fits_the_daily_budget_and_keeps_every_field(tmp_path: Path) -> None:
    from protocol.messages import parse_message
    from protocol.telemetry_wire import encode_full

    telemetry, sink, model = _busy_window(tmp_path)
    window = telemetry.publish_window()
    prediction = window.prediction
    assert (
        prediction is not None and prediction.class_counts is not None and len(prediction.class_counts) == 10
    )
    filled = prediction.model_dump(exclude_none=True).keys() - {"output_histogram_counts"}
    assert filled == set(prediction.model_fields) - {"output_histogram_counts"}, "a busy window sets them all"
    assert window.resources.temperature_c is not None and window.dropped_messages == 17
    topic, payload, _, _ = sink.sent[0]

    per_day = _mqtt_bytes_per_day(topic, len(payload))
    assert per_day < DAILY_BUDGET_BYTES, f"{len(payload)}-byte busy window: {per_day} bytes/day"
    assert len(payload) * 1440 < DAILY_BUDGET_BYTES
    # What the full form would have cost, with the model's sha256 as agents used to send it.
    with_sha = window.model_copy(update={"model": model})
    assert _mqtt_bytes_per_day(topic, len(encode_full(with_sha))) > DAILY_BUDGET_BYTES

    # Nothing the fleet uses is lost: the payload parses back to the very window built.
    assert parse_message(TelemetryWindow, payload) == window
    assert window.model == ModelRef(name=model.name, version=model.version)  # the sha is in the status
    assert payload.startswith(b'{"schema_version":1,"kind":"telemetry",')
    assert b"sha256" not in payload and b"window_start" not in payload


def test_the_fleet_stores_a_compact_window_as_it_stored_the_full_form(tmp_path: Path) -> None:
    # Runs where the fleet is installed (not in the device install of the aarch64 stage).
    pytest.importorskip("sqlalchemy", reason="the fleet's storage layer is not installed here")
    from fleet.ingest.decode import Decoded, Received, decode
    from fleet.storage.ingest import telemetry_row
    from protocol.telemetry_wire import encode_full

    telemetry, sink, model = _busy_window(tmp_path)
    window = telemetry.publish_window()
    topic, compact, _, _ = sink.sent[0]
    old_form = encode_full(window.model_copy(update={"model": model}))  # what older agents send
    received_at = datetime(2030, 6, 1, 12, 1, 5, tzinfo=UTC)

    rows = []
    for payload in (compact, old_form):
        decoded = decode(Received(topic, payload, received_at), Topics(), max_payload_bytes=256 * 1024)
        assert isinstance(decoded, Decoded), decoded
        rows.append(telemetry_row(decoded.message, received_at, decoded.raw))
    new_row, old_row = rows
    new_payload, old_payload = json.loads(new_row.pop("payload")), json.loads(old_row.pop("payload"))
    assert new_row == old_row  # every column: device, seq, times, model name and version, metrics
    assert new_row["model_name"] == model.name and new_row["model_version"] == model.version
    assert new_row["requests"] == window.requests and new_row["latency_p50"] is not None
    # The stored payload is the full form either way; only the sha is no longer in it.
    assert old_payload["model"].pop("sha256") == model.sha256
    assert new_payload == old_payload


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"t0": 0, "requests": 1}, "'requests' is not a compact member name"),
        ({"t0": 0, "x": {"cpu_percent": 1}}, "x.cpu_percent is not a compact member name of resources"),
        ({"t0": 0, "zz": 1}, "'zz' is not a compact member name"),
        ({"t0": "2030-06-01T12:00:00Z", "dt": 60}, "dt .* needs t0 in Unix seconds"),
        ({"t0": 0, "dt": 60, "l": [1, 2, 3]}, r"l must be \[p50, p95, p99, max\], got 3 values"),
    ],
)
def test_a_half_compact_window_is_refused_by_name(document: dict[str, object], problem: str) -> None:
    from protocol.errors import MessageError
    from protocol.messages import parse_message

    payload = json.dumps({"schema_version": 1, "kind": "telemetry", "d": DEVICE, **document}).encode()
    with pytest.raises(MessageError, match=problem):
        parse_message(TelemetryWindow, payload)


def test_every_window_member_has_one_compact_name() -> None:
    """A member added to the schema without a compact name would fail to encode: caught here."""
    from protocol.messages import LatencySummary, PredictionHealth
    from protocol.telemetry_wire import COMPACT_NAMES, DRIFT, DRIFT_ORDER, MEMBER_NAMES

    assert set(COMPACT_NAMES) == set(TelemetryWindow.model_fields) - {"schema_version", "kind"}
    nested = {"model": ModelRef, "latency_ms": LatencySummary, "resources": ResourceUsage,
              "prediction": PredictionHealth}  # fmt: skip
    for member, model_type in nested.items():
        # The prediction's drift members travel as one array (``dr``), the rest by short name.
        extra = set(DRIFT_ORDER) if member == "prediction" else set()
        assert set(MEMBER_NAMES[member]) | extra == set(model_type.model_fields), member
        assert DRIFT not in MEMBER_NAMES[member].values(), member
        assert len(set(MEMBER_NAMES[member].values())) == len(MEMBER_NAMES[member]), member
    short = set(COMPACT_NAMES.values())
    assert len(short) == len(COMPACT_NAMES) and not short & set(TelemetryWindow.model_fields)
