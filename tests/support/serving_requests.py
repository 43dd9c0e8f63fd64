"""Asking a serving agent over HTTP, well and badly: the checks the agent's and the whole-chain
tests share.

``ask_and_compare`` sends 1 and 3 instances in JSON and in ``.npz`` and requires every output to
equal the runtime run directly (``published_models.expected_outputs``); ``malformed_requests``
yields bad requests of every kind (wrong shapes, dtypes, counts, names, bad JSON, bad ``.npz``)
and ``survives_malformed`` sends them and requires a 4xx with an error for each, then a live
process and a healthy agent.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import requests

from agent.http_limits import HttpLimits
from protocol.manifest import Manifest
from runtime import RuntimeChoice
from tests.support.published_models import expected_outputs

NPZ = "application/x-npz"
JSON_TYPE = {"Content-Type": "application/json"}


def npz_bytes(arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def json_outputs(body: dict[str, Any], manifest: Manifest) -> list[npt.NDArray[np.float32]]:
    """Every output of a JSON answer, in the manifest's order; a multi-output answer must name
    them in that order and give their shapes."""
    outputs = body["outputs"]
    if len(manifest.outputs) == 1:  # the plain single-output form
        return [np.asarray(outputs, dtype=np.float32)]
    assert list(outputs) == [s.name for s in manifest.outputs], list(outputs)
    shapes = {n: list(np.asarray(v).shape) for n, v in outputs.items()}
    assert body["shapes"] == shapes, (body["shapes"], shapes)
    return [np.asarray(outputs[s.name], dtype=np.float32) for s in manifest.outputs]


def assert_outputs(
    actual: list[npt.NDArray[np.float32]], expected: list[npt.NDArray[np.float32]], what: str
) -> None:
    """The same kernels on the same batch: equal bit for bit."""
    shapes = ([a.shape for a in actual], [e.shape for e in expected])
    assert shapes[0] == shapes[1], f"{what}: output shapes {shapes[0]}, the runtime's {shapes[1]}"
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e, err_msg=what)


def ask_and_compare(
    session: requests.Session,
    url: str,
    manifest: Manifest,
    tflite: bytes,
    arrays: list[npt.NDArray[np.float32]],
    *,
    runtime: RuntimeChoice,
) -> None:
    """1 and 3 instances, JSON and npz: every output equal to ``runtime`` run directly (the
    runtime the agent serves with), and the labels of a classifier from its primary output."""
    names = [s.name for s in manifest.inputs]
    for count in (1, 3):
        what = f"{manifest.name}, {count} instance(s)"
        batch = [a[:count] for a in arrays]
        expected = expected_outputs(tflite, manifest, batch, runtime)
        inputs: Any = {n: a.tolist() for n, a in zip(names, batch, strict=True)}
        if len(names) == 1 and count == 1:
            inputs = batch[0][0].tolist()  # the simple form: one instance, no names
        body = json.dumps({"inputs": inputs}).encode()
        answer = session.post(f"{url}/v1/predict", data=body, headers=JSON_TYPE, timeout=30)
        if len(body) > HttpLimits().max_json_body_bytes:
            # Big images in JSON are refused up front, pointing at the binary forms checked below.
            assert answer.status_code == 413, f"{what}, JSON of {len(body)} bytes: {answer.status_code}"
            assert "application/x-npz" in answer.json()["error"], answer.text
        else:
            assert answer.status_code == 200, f"{what}, JSON: {answer.status_code} {answer.text}"
            assert_outputs(json_outputs(answer.json(), manifest), expected, f"{what}, JSON")
        if manifest.labels and answer.status_code == 200:
            wanted = [manifest.labels[i] for i in np.argmax(expected[manifest.primary_output_index], axis=1)]
            assert [p["label"] for p in answer.json()["predictions"]] == wanted, what
        binary = session.post(
            f"{url}/v1/predict",
            data=npz_bytes(dict(zip(names, batch, strict=True))),
            headers={"Content-Type": NPZ},
            timeout=30,
        )
        assert binary.status_code == 200, f"{what}, npz: {binary.status_code} {binary.text}"
        assert binary.headers["Content-Type"] == NPZ, binary.headers
        with np.load(io.BytesIO(binary.content)) as got:
            assert list(got.files) == [s.name for s in manifest.outputs], got.files
            assert_outputs([got[s.name] for s in manifest.outputs], expected, f"{what}, npz")


def malformed_requests(
    manifest: Manifest, rng: np.random.Generator, good: list[npt.NDArray[np.float32]], count: int
) -> Iterator[tuple[dict[str, str], bytes]]:
    """``count`` bad requests (headers, body), cycling through the kinds below."""
    names = [s.name for s in manifest.inputs]
    one = {n: a[:1] for n, a in zip(names, good, strict=True)}
    json_type = JSON_TYPE
    npz_type = {"Content-Type": NPZ}
    raw_type = {"Content-Type": "application/octet-stream"}

    def as_json(inputs: Any, **extra: Any) -> bytes:
        return json.dumps({"inputs": inputs, **extra}).encode()

    # Names and top_k are refused before any value is read: tiny values keep these quick.
    with_extra = as_json({**{n: [0.0] for n in names}, "extra": [1.0]})
    valid = as_json({n: [0.0] for n in names})
    some_missing = as_json({n: a.tolist() for n, a in list(one.items())[1:]})

    kinds: list[Callable[[], tuple[dict[str, str], bytes]]] = [
        lambda: (json_type, as_json({n: np.zeros(rng.integers(1, 5, 3)).tolist() for n in names})),  # shapes
        lambda: (json_type, as_json({n: [["x"] * 3] for n in names})),  # strings
        lambda: (json_type, as_json({n: None for n in names})),  # nulls
        lambda: (json_type, with_extra),  # an unknown name
        lambda: (json_type, some_missing),  # a missing input
        lambda: (json_type, as_json([[[1, 2], [3]]])),  # ragged
        lambda: (json_type, b'{"inputs": [NaN, Infinity]}'),  # non-finite
        lambda: (json_type, valid[:-1] + f', "top_k": {int(rng.integers(101, 1_000_000))}}}'.encode()),
        lambda: (
            json_type,
            bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8)),
        ),  # garbage
        lambda: (json_type, valid[: int(rng.integers(1, len(valid) - 1))]),  # cut
        lambda: (
            npz_type,
            npz_bytes({f"{n}-wrong": a for n, a in one.items()} | {"extra": good[0]}),
        ),  # npz: names
        lambda: (npz_type, npz_bytes({n: np.zeros((2, 3, 5), np.float32) for n in names})),  # npz: shapes
        lambda: (
            npz_type,
            npz_bytes({n: np.zeros((0, *a.shape[1:]), np.float32) for n, a in one.items()}),
        ),  # zero
        lambda: (npz_type, npz_bytes({n: np.full(a.shape, 1 + 2j) for n, a in one.items()})),  # complex
        lambda: (npz_type, npz_bytes({n: np.array([{"pickle": 1}], dtype=object) for n in names})),  # objects
        lambda: (npz_type, npz_bytes(dict(one))[: int(rng.integers(10, 200))]),  # truncated
        lambda: (npz_type, bytes(rng.integers(0, 256, 300, dtype=np.uint8))),  # not a zip
        lambda: (raw_type, bytes(int(rng.integers(0, 64)) * 4 + 1)),  # not whole float32 values
        lambda: (
            npz_type,
            npz_bytes({n: np.concatenate([a] * 2) for n, a in one.items()} | {names[0]: one[names[0]]})
            if len(names) > 1
            else npz_bytes({names[0]: np.full(one[names[0]].shape, np.nan, np.float32)}),
        ),  # counts that differ between inputs, or NaN
    ]
    for i in range(count):
        yield kinds[i % len(kinds)]()


def survives_malformed(
    session: requests.Session,
    url: str,
    manifest: Manifest,
    good: list[npt.NDArray[np.float32]],
    *,
    count: int,
    alive: Callable[[], bool],
) -> Counter[int]:
    """Send ``count`` malformed requests: each answered 4xx with an error, then the process is
    alive and health is ok (the callers' mistakes are not the model's). Returns the statuses."""
    statuses: Counter[int] = Counter()
    for headers, body in malformed_requests(manifest, np.random.default_rng(0), good, count):
        answer = session.post(f"{url}/v1/predict", data=body, headers=headers, timeout=30)
        statuses[answer.status_code] += 1
        assert 400 <= answer.status_code < 500, (
            manifest.name,
            headers,
            body[:200],
            answer.status_code,
            answer.text,
        )
        assert "error" in answer.json(), answer.text
    assert alive(), f"the agent died during the malformed requests to {manifest.name}"
    health = session.get(f"{url}/v1/health", timeout=10).json()
    assert health["status"] == "ok", health
    assert statuses.total() == count, statuses
    return statuses
