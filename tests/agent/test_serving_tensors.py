"""The inference API's tensor contract, in-process over real HTTP with real models: a runtime
failure is a 500 counted in telemetry and shown by ``/v1/health``, and the next request is right;
preprocessing is applied per input; inputs far outside the baseline are flagged and counted;
the instance limit and the binary forms refuse what they cannot take."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import requests

from agent.http_api import InferenceAPI
from agent.serving import ActiveModel, ModelHolder
from agent.serving_health import ServingHealth
from agent.store import ModelStore
from agent.telemetry import RequestMetrics
from protocol.signing import load_private_key
from runtime import RuntimeChoice, installed_runtimes
from tests.support.agent import stage_directly
from tests.support.published_models import expected_outputs, published_bundle, published_folder, raw_inputs

__all__ = ["published_folder"]  # the fixture, imported for pytest

NPZ = "application/x-npz"


Start = Callable[..., tuple[InferenceAPI, ActiveModel]]
"""``start(name, **api_options)``: serve a published-like model in-process."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def serve(
    published_folder: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> Iterator[tuple[Start, Clock]]:
    apis: list[InferenceAPI] = []
    clock = Clock()

    def start(
        name: str, max_instances: int = 4096, runtime: RuntimeChoice = "tflite-runtime"
    ) -> tuple[InferenceAPI, ActiveModel]:
        bundle = published_bundle(published_folder, name, load_private_key(signing_keys[0]))
        sha = stage_directly(tmp_path / name, bundle, signing_keys[1])
        model = ActiveModel.load(ModelStore(tmp_path / name).read(sha), runtime=runtime)
        holder = ModelHolder()
        holder.swap(model)
        health = ServingHealth(window_s=60, monotonic=clock)
        api = InferenceAPI(
            "127.0.0.1", 0, holder, RequestMetrics(), health=health, max_instances=max_instances
        ).start()
        apis.append(api)
        return api, model

    yield start, clock
    for api in apis:
        api.stop()


def _npz(**arrays: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_a_runtime_failure_is_a_counted_500_and_health_says_degraded(
    serve: tuple[Start, Clock], published_folder: Path
) -> None:
    start, clock = serve
    api, model = start("variable_length")
    url = f"{api.url}/v1/predict"
    # Length 16 folds into rows of 8; length 7 passes every shape check and fails in the runtime.
    good = np.arange(2 * 16, dtype=np.float32).reshape(2, 16)
    assert requests.post(url, json={"inputs": good.tolist()}, timeout=10).status_code == 200
    failed = requests.post(url, json={"inputs": np.ones((3, 7)).tolist()}, timeout=10)
    assert failed.status_code == 500
    assert "inference failed" in failed.json()["error"] and "RESHAPE" in failed.json()["error"]
    health = requests.get(f"{api.url}/v1/health", timeout=10).json()
    assert health["status"] == "degraded" and health["recent_failures"] == 1
    assert "RESHAPE" in health["last_error"]
    # The interpreter was rebuilt: the next request is right, at any batch.
    again = requests.post(url, json={"inputs": good.tolist()}, timeout=10)
    assert again.status_code == 200
    expected = expected_outputs(
        (published_folder / "variable_length.tflite").read_bytes(), model.manifest, [good], "tflite-runtime"
    )
    np.testing.assert_array_equal(np.asarray(again.json()["outputs"], np.float32), expected[0])
    window = api.metrics.take()
    assert window.errors == {"inference": 1} and window.requests == 3
    assert api.metrics.usage(model.sha256).errors == 1
    clock.now += 61  # a minute without failures: ok again
    assert requests.get(f"{api.url}/v1/health", timeout=10).json()["status"] == "ok"


def test_preprocessing_is_applied_per_input(serve: tuple[Start, Clock], published_folder: Path) -> None:
    start, _ = serve
    api, model = start("two_inputs")
    vector, image = raw_inputs(model.manifest.inputs, 2, seed=5)
    answer = requests.post(
        f"{api.url}/v1/predict",
        json={"inputs": {"vector": vector.tolist(), "image": image.tolist()}},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    tflite = (published_folder / "two_inputs.tflite").read_bytes()
    expected = expected_outputs(tflite, model.manifest, [vector, image], "tflite-runtime")[0]
    np.testing.assert_array_equal(np.asarray(answer.json()["outputs"], np.float32), expected)
    # Without the manifest's (x - offset) * scale the answer would differ: the check can fail.
    raw = expected_outputs(
        tflite, model.manifest.model_copy(update={"preprocessing": {}}), [vector, image], "tflite-runtime"
    )[0]
    assert not np.allclose(raw, expected)
    labels = model.labels or []
    assert [p["label"] for p in answer.json()["predictions"]] == [labels[i] for i in expected.argmax(axis=1)]


def test_inputs_far_outside_the_baseline_are_flagged_and_counted(serve: tuple[Start, Clock]) -> None:
    start, _ = serve
    api, model = start("two_inputs")
    vector, image = raw_inputs(model.manifest.inputs, 3, seed=5)
    vector[1] = 40.0  # the baseline saw 0..1
    body = {"inputs": {"vector": vector.tolist(), "image": image.tolist()}}
    answer = requests.post(f"{api.url}/v1/predict", json=body, timeout=10)
    assert answer.status_code == 200 and answer.json()["out_of_range"] == [1]
    binary = requests.post(
        f"{api.url}/v1/predict",
        data=_npz(vector=vector, image=image),
        headers={"Content-Type": NPZ},
        timeout=10,
    )
    assert binary.status_code == 200 and binary.headers["X-Out-Of-Range"] == "1"
    window = api.metrics.take()
    assert (window.instances, window.out_of_range) == (6, 2)
    inside = requests.post(
        f"{api.url}/v1/predict",
        json={"inputs": {"vector": vector[:1].tolist(), "image": image[:1].tolist()}},
        timeout=10,
    )
    assert "out_of_range" not in inside.json()


@pytest.mark.parametrize("runtime", [info.name for info in installed_runtimes()])
def test_a_fixed_batch_model_answers_any_count_and_the_limit_is_named(
    serve: tuple[Start, Clock], runtime: RuntimeChoice, published_folder: Path
) -> None:
    start, _ = serve
    api, model = start("detector", max_instances=4, runtime=runtime)
    assert model.fixed_batch == 1 and not model.dynamic_batch
    (image,) = raw_inputs(model.manifest.inputs, 5, seed=2)
    url = f"{api.url}/v1/predict"
    answer = requests.post(url, data=_npz(image=image[:4]), headers={"Content-Type": NPZ}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["X-Output-Shapes"] == "scores=4,10;boxes=4,10,4"  # the model's output order
    expected = expected_outputs(
        (published_folder / "detector.tflite").read_bytes(), model.manifest, [image[:4]], runtime
    )
    with np.load(io.BytesIO(answer.content)) as got:
        for spec, want in zip(model.manifest.outputs, expected, strict=True):
            np.testing.assert_array_equal(got[spec.name], want)
    refused = requests.post(url, json={"inputs": image.tolist()}, timeout=10)
    assert refused.status_code == 400 and "at most 4 instances" in refused.json()["error"]
    assert model.loaded.shapes == [(1, 32, 32, 3)]  # never resized


def test_binary_forms_refuse_what_they_cannot_carry(serve: tuple[Start, Clock]) -> None:
    start, _ = serve
    api, model = start("two_inputs")
    url = f"{api.url}/v1/predict"
    raw = requests.post(
        url, data=b"\0" * 64, headers={"Content-Type": "application/octet-stream"}, timeout=10
    )
    assert raw.status_code == 400 and "takes 2 inputs" in raw.json()["error"] and NPZ in raw.json()["error"]
    listed = requests.post(url, json={"inputs": [0.0] * 8}, timeout=10)
    assert listed.status_code == 400 and "keyed by name (vector, image)" in listed.json()["error"]
    vector, image = raw_inputs(model.manifest.inputs, 2, seed=5)
    counts = requests.post(
        url, data=_npz(vector=vector, image=image[:1]), headers={"Content-Type": NPZ}, timeout=10
    )
    assert counts.status_code == 400 and "same number of instances" in counts.json()["error"]
    missing = requests.post(url, json={"inputs": {"vector": vector.tolist()}}, timeout=10)
    assert missing.status_code == 400 and "missing: image" in missing.json()["error"]
    assert requests.get(f"{api.url}/v1/health", timeout=10).json()["status"] == "ok"


def test_an_int8_input_takes_already_quantized_values(serve: tuple[Start, Clock]) -> None:
    start, _ = serve
    api, model = start("detector")
    (image,) = raw_inputs(model.manifest.inputs, 1, seed=2)
    url = f"{api.url}/v1/predict"
    real = requests.post(url, data=_npz(image=image), headers={"Content-Type": NPZ}, timeout=10)
    quantized = np.clip(
        np.round(image / model.loaded.inputs[0].scale) + model.loaded.inputs[0].zero_point, -128, 127
    )
    same = requests.post(
        url, data=_npz(image=quantized.astype(np.int8)), headers={"Content-Type": NPZ}, timeout=10
    )
    assert real.status_code == same.status_code == 200
    with np.load(io.BytesIO(real.content)) as a, np.load(io.BytesIO(same.content)) as b:
        np.testing.assert_array_equal(a["scores"], b["scores"])


def test_deeply_nested_json_is_a_400(serve: tuple[Start, Clock]) -> None:
    start, _ = serve
    api, _ = start("pose")
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = requests.post(f"{api.url}/v1/predict", data=body, timeout=10)
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    assert requests.get(f"{api.url}/v1/health", timeout=10).json()["status"] == "ok"
