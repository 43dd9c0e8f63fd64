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
from tests.support.agent import Bundles, stage_directly

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


def bundles_x_placeholder() -> list[list[list[float]]]:
    return [[[0.0]] * 8] * 8


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
        (b"", 400, ["not valid JSON"]),
        ({"inputs": [[[True]] * 8] * 8}, 400, ["booleans"]),
        ({"inputs": bundles_x_placeholder(), "top_k": 0}, 400, ["top_k"]),
    ],
    ids=[
        "wrong-shape",
        "strings",
        "nan",
        "not-a-list",
        "no-inputs",
        "garbage-json",
        "too-large",
        "empty",
        "booleans",
        "bad-top-k",
    ],
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


def _post_binary(api: InferenceAPI, x: np.ndarray) -> requests.Response:
    data = np.ascontiguousarray(x, dtype="<f4").tobytes()
    return requests.post(
        f"{api.url}/v1/predict", data=data, headers={"Content-Type": "application/octet-stream"}, timeout=10
    )


def test_binary_body_gives_the_same_outputs_as_json(
    served: tuple[InferenceAPI, ActiveModel], bundles: Bundles
) -> None:
    api, _ = served
    x = bundles.samples_x[:3]
    response = _post_binary(api, x)
    assert response.status_code == 200, response.text
    assert response.headers["X-Output-Shape"] == "3,10"
    assert response.headers["X-Model"] == "digits/1.0.0"
    outputs = np.frombuffer(response.content, dtype="<f4").reshape(3, 10)
    expected = np.asarray(_post(api, {"inputs": x.tolist()}).json()["outputs"], dtype=np.float32)
    np.testing.assert_array_equal(outputs, expected)
    assert response.headers["X-Classes"] == ",".join(str(int(c)) for c in expected.argmax(axis=1))


def test_bad_binary_bodies_are_refused_in_words(
    served: tuple[InferenceAPI, ActiveModel], bundles: Bundles
) -> None:
    api, _ = served
    short = requests.post(
        f"{api.url}/v1/predict", data=b"\0" * 10, headers={"Content-Type": "application/octet-stream"}
    )
    assert short.status_code == 400 and "multiple of 256" in short.json()["error"]
    nan = bundles.samples_x[:1].copy()
    nan[0, 0, 0, 0] = np.nan
    refused = _post_binary(api, nan)
    assert refused.status_code == 400 and "NaN" in refused.json()["error"]
    assert _post_binary(api, bundles.samples_x[:1]).status_code == 200


def test_the_api_on_a_unix_socket(bundles: Bundles, signing_keys: tuple[Path, Path], tmp_path: Path) -> None:
    import socket
    import tempfile

    state = tmp_path / "state"
    sha = stage_directly(state, bundles.v1, signing_keys[1])
    holder = ModelHolder()
    holder.swap(ActiveModel.load(ModelStore(state).read(sha), runtime="tflite-runtime"))
    path = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp")) / "agent.sock"  # AF_UNIX paths are short
    api = InferenceAPI("127.0.0.1", 0, holder, RequestMetrics(), unix_socket=path).start()

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(path))

    try:
        connection = UnixConnection("localhost", timeout=10)
        for _ in range(2):  # keep-alive on the socket too
            connection.request(
                "POST",
                "/v1/predict",
                body=json.dumps({"inputs": bundles.samples_x[0].tolist()}),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["model"]["version"] == "1.0.0"
        connection.close()
    finally:
        api.stop()
    assert not path.exists()  # removed on stop


@pytest.mark.parametrize("runtime", ["tflite-runtime", "litert"])
def test_the_smoke_test_passes_in_each_runtime(
    bundles: Bundles, signing_keys: tuple[Path, Path], tmp_path: Path, runtime: str
) -> None:
    """Bundles carry outputs recorded by the converter; each device runtime must reproduce them."""
    from agent.update import smoke as smoke_step
    from runtime import installed_runtimes, resolve_runtime

    if runtime not in {info.name for info in installed_runtimes()}:
        pytest.skip(f"{runtime} is not installed here")
    sha = stage_directly(tmp_path / "state", bundles.v2, signing_keys[1])
    model = smoke_step.smoke(ModelStore(tmp_path / "state"), sha, runtime, 2)  # type: ignore[arg-type]
    assert model.loaded.runtime.name == runtime
    if {"litert", "tflite-runtime"} <= {info.name for info in installed_runtimes()}:
        assert resolve_runtime("auto").name == "litert"


def test_a_100_mb_body_is_refused_before_it_is_read(served: tuple[InferenceAPI, ActiveModel]) -> None:
    import socket

    api, _ = served
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n" + b"[" * 65536
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"limit" in answer and b"Connection: close" in answer
    assert requests.get(f"{api.url}/v1/health", timeout=5).json()["status"] == "ok"


def test_top_k_with_labels(served: tuple[InferenceAPI, ActiveModel], bundles: Bundles) -> None:
    api, _ = served
    response = _post(api, {"inputs": bundles.samples_x[:2].tolist(), "top_k": 3})
    assert response.status_code == 200, response.text
    for prediction, row in zip(response.json()["predictions"], response.json()["outputs"], strict=True):
        top = prediction["top"]
        # int8 outputs tie often: compare the scores, and the classes they belong to
        assert [t["confidence"] for t in top] == pytest.approx(sorted(row, reverse=True)[:3])
        assert all(row[t["class"]] == pytest.approx(t["confidence"]) for t in top)
        assert top[0]["class"] == prediction["class"] and top[0]["label"] == str(top[0]["class"])
        assert top[0]["confidence"] >= top[1]["confidence"] >= top[2]["confidence"]
