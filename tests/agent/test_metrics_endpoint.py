"""``GET /metrics`` over real HTTP with a real TFLite model, parsed by Prometheus's own parser."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from agent.app import Agent
from agent.config import load_config
from agent.http_api import InferenceAPI
from agent.metrics_text import CONTENT_TYPE, MetricsSources
from agent.serving import ActiveModel, ModelHolder
from agent.store import ModelStore
from agent.telemetry import RequestMetrics
from edgefleet.mosquitto import MosquittoBroker
from protocol.schema import ModelRef
from tests.agent.peer import FleetPeer
from tests.support.agent import DEVICE, Bundles, stage_directly
from tests.support.toml import config_toml
from tests.support.wait import wait_until

# The parser is a test tool; the device install of the aarch64 stage does not carry it.
parser = pytest.importorskip("prometheus_client.parser")
text_string_to_metric_families = parser.text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DIGITS = {"model": "digits", "version": "1.0.0"}


@pytest.fixture(scope="module")
def served(
    bundles: Bundles, signing_keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InferenceAPI]:
    state = tmp_path_factory.mktemp("metrics-state")
    sha = stage_directly(state, bundles.v1, signing_keys[1])
    model = ActiveModel.load(ModelStore(state).read(sha), runtime="tflite-runtime")
    holder = ModelHolder()
    holder.swap(model)
    api = InferenceAPI("127.0.0.1", 0, holder, RequestMetrics()).start()
    yield api
    api.stop()


def _refs(api: InferenceAPI) -> MetricsSources:
    def model_ref(sha: str) -> ModelRef | None:
        model = api.holder.current
        return model.ref if model is not None and model.sha256 == sha else None

    return MetricsSources(api.metrics, "9.9.9", model_ref, lambda: "probation")


def _scrape(url: str) -> Samples:
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == CONTENT_TYPE
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _buckets(samples: Samples, name: str, **labels: str) -> list[tuple[float, float]]:
    found = [
        (float(dict(key)["le"]), value)
        for (sample, key), value in samples.items()
        if sample == f"{name}_bucket" and {k: v for k, v in key if k != "le"} == labels
    ]
    return sorted(found)


def test_off_by_default_answers_404(served: InferenceAPI) -> None:
    served.metrics_page = None
    response = requests.get(f"{served.url}/metrics", timeout=10)
    assert response.status_code == 404
    assert "no such endpoint: GET /metrics" in response.json()["error"]


def test_counters_and_histograms_follow_the_requests(served: InferenceAPI, bundles: Bundles) -> None:
    served.metrics_page = _refs(served).page
    try:
        for row in bundles.samples_x[:2]:  # earlier requests, in an earlier telemetry window
            requests.post(f"{served.url}/v1/predict", json={"inputs": row.tolist()}, timeout=10)
        before = _scrape(served.url)
        served.metrics.take()  # a telemetry window closes: the counters must not go back
        successes, bad = 7, 3
        for row in bundles.samples_x[:successes]:
            response = requests.post(f"{served.url}/v1/predict", json={"inputs": row.tolist()}, timeout=10)
            assert response.status_code == 200, response.text
        for _ in range(bad):
            assert requests.post(f"{served.url}/v1/predict", data=b"nope", timeout=10).status_code == 400
        served.metrics.take()
        after = _scrape(served.url)
        again = _scrape(served.url)  # a scrape is not a predict request: it leaves the counters alone
    finally:
        served.metrics_page = None

    requests_total = "edgefleet_agent_requests_total"
    ok = _get(after, requests_total, **DIGITS, outcome="ok") - _get(
        before, requests_total, **DIGITS, outcome="ok"
    )
    assert ok == successes
    bad_key = {"model": "", "version": "", "outcome": "bad_request"}
    assert _get(after, requests_total, **bad_key) - _get(before, requests_total, **bad_key) == bad
    assert _get(after, "edgefleet_agent_build_info", version="9.9.9") == 1

    for name in ("edgefleet_agent_request_latency_seconds", "edgefleet_agent_invoke_seconds"):
        count = _get(after, f"{name}_count", **DIGITS)
        assert count - _get(before, f"{name}_count", **DIGITS) == successes
        assert count == _get(after, requests_total, **DIGITS, outcome="ok")
        buckets = _buckets(after, name, **DIGITS)
        assert len(buckets) > 10 and buckets[-1] == (float("inf"), count)
        values = [value for _, value in buckets]
        assert values == sorted(values), f"{name} buckets are not cumulative: {values}"
        assert values[-2] == count and values[0] < count  # every request in a finite bucket, spread out
        assert 0 < _get(after, f"{name}_sum", **DIGITS) < count * 10

    states = {
        dict(key)["state"]: value
        for (sample, key), value in after.items()
        if sample == "edgefleet_agent_update_state"
    }
    assert states["probation"] == 1 and sum(states.values()) == 1 and "idle" in states
    assert _get(after, "process_resident_memory_bytes") > 10 * 2**20
    assert _get(after, "process_cpu_seconds_total") > 0
    assert _get(again, requests_total, **DIGITS, outcome="ok") == _get(
        after, requests_total, **DIGITS, outcome="ok"
    )


@pytest.mark.parametrize("enabled", [False, True], ids=["off", "on"])
def test_the_agent_serves_metrics_only_when_configured(
    enabled: bool,
    tmp_path: Path,
    broker: MosquittoBroker,
    fleet_peer: FleetPeer,
    trusted_dir: Path,
    bundles: Bundles,
) -> None:
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    path = tmp_path / "agent.toml"
    settings = {"api": {"metrics": True}} if enabled else {}
    path.write_text(
        config_toml(tmp_path / "state", trusted_dir, fleet_peer.url, mqtt_port=broker.port, settings=settings)
    )
    agent = Agent(load_config(path)).start()
    try:
        assert agent.api is not None
        wait_until(lambda: agent.holder.current is not None, "v1 installed by the start-up check", 20)
        response = requests.post(
            f"{agent.api.url}/v1/predict", json={"inputs": bundles.samples_x[0].tolist()}, timeout=10
        )
        assert response.status_code == 200, response.text
        if not enabled:
            assert requests.get(f"{agent.api.url}/metrics", timeout=10).status_code == 404
            return
        samples = _scrape(agent.api.url)
    finally:
        agent.stop()
    assert _get(samples, "edgefleet_agent_requests_total", **DIGITS, outcome="ok") == 1
    assert _get(samples, "edgefleet_agent_request_latency_seconds_count", **DIGITS) == 1
    assert ("edgefleet_agent_outbox_messages", frozenset()) in samples
    states = [
        dict(key)["state"] for (n, key), v in samples.items() if n == "edgefleet_agent_update_state" and v
    ]
    assert states == ["idle"]


def test_the_serving_process_does_not_import_prometheus_client() -> None:
    code = (
        "import sys, agent.app, agent.metrics_text, agent.http_api, agent.__main__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prometheus_client'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
