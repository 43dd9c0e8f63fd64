"""The inference API over real HTTP with a real TFLite model."""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from agent.http_api import InferenceAPI
from agent.serving import ActiveModel, ModelHolder
from agent.store import ModelStore
from agent.telemetry import RequestMetrics
from tests.agent.conftest import Bundles, stage_directly

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def served(
    bundles: Bundles, signing_keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[InferenceAPI, ActiveModel]]:
    state = tmp_path_factory.mktemp("serving-state")
    sha = stage_directly(state, bundles.v1, signing_keys[1])
    model = ActiveModel.load(ModelStore(state).read(sha), runtime="tflite-runtime")
    holder = ModelHolder()
    holder.swap(model)
    api = InferenceAPI("127.0.0.1", 0, holder, RequestMetrics(), max_body_bytes=MAX_BODY).start()
    yield api, model
    api.stop()


def _post(api: InferenceAPI, body: Any, raw: bytes | None = None) -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(f"{api.url}/v1/predict", data=data, timeout=10)


def test_one_instance(served: tuple[InferenceAPI, ActiveModel], bundles: Bundles) -> None:
    api, _ = served
    response = _post(api, {"inputs": bundles.samples_x[0].tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "digits", "version": "1.0.0"}
    assert np.asarray(body["outputs"]).shape == (1, 10)
    (prediction,) = body["predictions"]
    assert prediction["label"] == str(prediction["class"])
    assert 0 < prediction["confidence"] <= 1.0


def test_batch_matches_recorded_samples(served: tuple[InferenceAPI, ActiveModel], bundles: Bundles) -> None:
    api, model = served
    response = _post(api, {"inputs": bundles.samples_x.tolist()})
    assert response.status_code == 200, response.text
    outputs = np.asarray(response.json()["outputs"], dtype=np.float32)
    from protocol.bundle import SAMPLES, read_bundle

    with np.load(io.BytesIO(read_bundle(io.BytesIO(bundles.v1)).members[SAMPLES])) as samples:
        expected = samples["y"]
    assert outputs.shape == expected.shape == (16, 10)
    assert np.max(np.abs(outputs - expected)) <= model.manifest.smoke.atol
    assert [p["class"] for p in response.json()["predictions"]] == list(np.argmax(expected, axis=1))


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"inputs": [[0.0] * 8] * 8}, 400, ["shape [8, 8]", "[8, 8, 1]", "float32"]),
        ({"inputs": [[["a"]] * 8] * 8}, 400, ["strings", "[8, 8, 1]"]),
        ({"inputs": [[[float("nan")]] * 8] * 8}, 400, ["NaN"]),
        ({"inputs": "pixels"}, 400, ["nested list"]),
        ({"wrong": 1}, 400, ['"inputs"']),
        (b"{not json", 400, ["not valid JSON"]),
        (b"x" * (MAX_BODY + 1), 413, ["limit"]),
    ],
    ids=["wrong-shape", "strings", "nan", "not-a-list", "no-inputs", "garbage-json", "too-large"],
)
def test_bad_requests_are_refused_in_words(
    served: tuple[InferenceAPI, ActiveModel], bundles: Bundles, body: Any, status: int, words: list[str]
) -> None:
    api, _ = served
    response = _post(api, None, raw=body) if isinstance(body, bytes) else _post(api, body)
    assert response.status_code == status
    message = response.json()["error"]
    for word in words:
        assert word in message
    # ... and the agent still serves afterwards
    assert _post(api, {"inputs": bundles.samples_x[0].tolist()}).status_code == 200


def test_keep_alive_health_and_manifest(served: tuple[InferenceAPI, ActiveModel], bundles: Bundles) -> None:
    api, model = served
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        for _ in range(3):  # one TCP connection, several requests
            connection.request("GET", "/v1/health")
            response = connection.getresponse()
            health = json.loads(response.read())
            assert response.status == 200
        assert health["status"] == "ok"
        assert health["model"]["sha256"] == model.sha256
        connection.request(
            "POST",
            "/v1/predict",
            body=json.dumps({"inputs": bundles.samples_x[:2].tolist()}),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["outputs"]) == 2
        connection.request("GET", "/v1/model")
        response = connection.getresponse()
        assert json.loads(response.read())["version"] == "1.0.0"
    finally:
        connection.close()


def test_no_model_yet_is_503() -> None:
    api = InferenceAPI("127.0.0.1", 0, ModelHolder(), RequestMetrics()).start()
    try:
        assert requests.get(f"{api.url}/v1/health", timeout=5).json()["status"] == "no-model"
        response = requests.post(f"{api.url}/v1/predict", json={"inputs": [1.0]}, timeout=5)
        assert response.status_code == 503
        assert "no model" in response.json()["error"]
    finally:
        api.stop()
