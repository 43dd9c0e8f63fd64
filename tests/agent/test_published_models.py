"""Models shaped like published ones, deployed to a real agent process and asked over HTTP.

Each model goes the whole device path (download, verify, smoke test through
``runtime.run_samples``, activate) and then answers 1 and 3 instances in JSON and in ``.npz``
with every output equal to the runtime run directly; 1,000 malformed requests later the process
is alive, health is ok and the next good request is right. A model with a custom op is refused
by name and never serves.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import requests

from agent.errors import SmokeTestError
from agent.store import ModelStore
from agent.update.smoke import smoke
from protocol.bundle import parse_manifest, read_bundle
from protocol.manifest import Manifest
from protocol.signing import load_private_key
from runtime import installed_runtimes
from tests.agent.peer import FleetPeer
from tests.support.agent import DEVICE, stage_directly
from tests.support.processes import AgentProcess, agent_process
from tests.support.published_models import (
    RECIPES,
    custom_op_bundle,
    expected_outputs,
    published_bundle,
    published_folder,
    raw_inputs,
)

__all__ = ["published_folder"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

NPZ = "application/x-npz"
MALFORMED = 1000


@pytest.fixture(scope="session")
def published_bundles(published_folder: Path, signing_keys: tuple[Path, Path]) -> dict[str, bytes]:
    key = load_private_key(signing_keys[0])
    made = {name: published_bundle(published_folder, name, key) for name in RECIPES}
    made["custom_op"] = custom_op_bundle(published_folder, key)
    return made


@pytest.fixture
def agent(tmp_path: Path, fleet_peer: FleetPeer, trusted_dir: Path) -> Iterator[AgentProcess]:
    process = agent_process(tmp_path, fleet_peer.url, trusted_dir)
    yield process
    process.kill()


def _serve(
    agent: AgentProcess, fleet_peer: FleetPeer, trusted: Path, bundle: bytes, *, deploy: bool
) -> Manifest:
    """Start ``agent`` serving ``bundle``: deployed through the fleet (download, verify, smoke,
    activate, probation) or put in its store before it starts (the quick way)."""
    manifest = parse_manifest(read_bundle(io.BytesIO(bundle)).manifest_bytes)
    if deploy:
        fleet_peer.deploy(DEVICE, bundle, manifest.name, manifest.version)
    else:
        stage_directly(agent.state_dir, bundle, trusted / "operator.pub")
    agent.start()
    agent.wait_for_version(manifest.version, timeout_s=60)
    return manifest


def _npz(arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _json_outputs(body: dict[str, Any], manifest: Manifest) -> list[npt.NDArray[np.float32]]:
    outputs = body["outputs"]
    if len(manifest.outputs) == 1:  # the plain single-output form
        return [np.asarray(outputs, dtype=np.float32)]
    assert list(outputs) == [s.name for s in manifest.outputs]
    assert body["shapes"] == {n: list(np.asarray(v).shape) for n, v in outputs.items()}
    return [np.asarray(outputs[s.name], dtype=np.float32) for s in manifest.outputs]


def _assert_outputs(actual: list[npt.NDArray[np.float32]], expected: list[npt.NDArray[np.float32]]) -> None:
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)  # the same kernels on the same batch: bit for bit


def _ask(
    session: requests.Session,
    url: str,
    manifest: Manifest,
    tflite: bytes,
    arrays: list[npt.NDArray[np.float32]],
) -> None:
    """1 and 3 instances, JSON and npz: every output equal to the runtime's."""
    names = [s.name for s in manifest.inputs]
    for count in (1, 3):
        batch = [a[:count] for a in arrays]
        expected = expected_outputs(tflite, manifest, batch, "tflite-runtime")
        inputs: Any = {n: a.tolist() for n, a in zip(names, batch, strict=True)}
        if len(names) == 1 and count == 1:
            inputs = batch[0][0].tolist()  # the simple form: one instance, no names
        answer = session.post(f"{url}/v1/predict", json={"inputs": inputs}, timeout=30)
        assert answer.status_code == 200, answer.text
        _assert_outputs(_json_outputs(answer.json(), manifest), expected)
        if manifest.labels:
            assert [p["label"] for p in answer.json()["predictions"]] == [
                manifest.labels[i] for i in np.argmax(expected[manifest.primary_output_index], axis=1)
            ]
        binary = session.post(
            f"{url}/v1/predict",
            data=_npz(dict(zip(names, batch, strict=True))),
            headers={"Content-Type": NPZ},
            timeout=30,
        )
        assert binary.status_code == 200, binary.text
        assert binary.headers["Content-Type"] == NPZ
        with np.load(io.BytesIO(binary.content)) as got:
            assert list(got.files) == [s.name for s in manifest.outputs]
            _assert_outputs([got[s.name] for s in manifest.outputs], expected)


def _malformed(
    manifest: Manifest, rng: np.random.Generator, good: list[npt.NDArray[np.float32]]
) -> Iterator[tuple[dict[str, str], bytes]]:
    """Bad requests of every kind, ``MALFORMED`` of them, cycling through the kinds."""
    names = [s.name for s in manifest.inputs]
    one = {n: a[:1] for n, a in zip(names, good, strict=True)}
    json_type = {"Content-Type": "application/json"}
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
            _npz({f"{n}-wrong": a for n, a in one.items()} | {"extra": good[0]}),
        ),  # npz: names
        lambda: (npz_type, _npz({n: np.zeros((2, 3, 5), np.float32) for n in names})),  # npz: shapes
        lambda: (
            npz_type,
            _npz({n: np.zeros((0, *a.shape[1:]), np.float32) for n, a in one.items()}),
        ),  # zero
        lambda: (npz_type, _npz({n: np.full(a.shape, 1 + 2j) for n, a in one.items()})),  # complex
        lambda: (npz_type, _npz({n: np.array([{"pickle": 1}], dtype=object) for n in names})),  # objects
        lambda: (npz_type, _npz({n: a for n, a in one.items()})[: int(rng.integers(10, 200))]),  # truncated
        lambda: (npz_type, bytes(rng.integers(0, 256, 300, dtype=np.uint8))),  # not a zip
        lambda: (raw_type, bytes(int(rng.integers(0, 64)) * 4 + 1)),  # not whole float32 values
        lambda: (
            npz_type,
            _npz({n: np.concatenate([a] * 2) for n, a in one.items()} | {names[0]: one[names[0]]})
            if len(names) > 1
            else _npz({names[0]: np.full(one[names[0]].shape, np.nan, np.float32)}),
        ),  # counts that differ between inputs, or NaN
    ]
    for i in range(MALFORMED):
        yield kinds[i % len(kinds)]()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_published_model_serves_every_output_and_survives_malformed_requests(  # noqa: PLR0917 - pytest fixtures
    name: str,
    agent: AgentProcess,
    fleet_peer: FleetPeer,
    trusted_dir: Path,
    published_bundles: dict[str, bytes],
    published_folder: Path,
) -> None:
    # The deployment path for one model (the fixed-batch two-output detector), the store for
    # the others: the smoke test of every model is checked in-process below.
    manifest = _serve(agent, fleet_peer, trusted_dir, published_bundles[name], deploy=name == "detector")
    tflite = (published_folder / f"{name}.tflite").read_bytes()
    good = raw_inputs(manifest.inputs, 3, seed=7)
    with requests.Session() as session:
        _ask(session, agent.url, manifest, tflite, good)
        statuses: dict[int, int] = {}
        for headers, body in _malformed(manifest, np.random.default_rng(0), good):
            answer = session.post(f"{agent.url}/v1/predict", data=body, headers=headers, timeout=30)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            assert 400 <= answer.status_code < 500, (headers, body[:200], answer.status_code, answer.text)
            assert "error" in answer.json()
        assert agent.alive
        health = session.get(f"{agent.url}/v1/health", timeout=10).json()
        assert health["status"] == "ok", health  # the callers' mistakes, not the model's
        _ask(session, agent.url, manifest, tflite, good)
    assert sum(statuses.values()) == MALFORMED


def test_a_model_with_a_custom_op_is_refused_by_name(
    agent: AgentProcess, fleet_peer: FleetPeer, published_bundles: dict[str, bytes]
) -> None:
    fleet_peer.deploy(DEVICE, published_bundles["custom_op"], "custom-op", "1.0.0")
    agent.start()
    agent.wait_for_log("BesselI1e", timeout_s=60)
    log = agent.log_text()
    assert "custom op BesselI1e" in log, log[-3000:]
    health = requests.get(f"{agent.url}/v1/health", timeout=10).json()
    assert health["status"] == "no-model" and health["model"] is None


@pytest.mark.parametrize("runtime", [info.name for info in installed_runtimes()])
def test_the_smoke_test_of_every_published_model_passes(
    runtime: str, published_bundles: dict[str, bytes], trusted_dir: Path, tmp_path: Path
) -> None:
    """Recorded with tflite-runtime, reproduced by each runtime a device may have."""
    store = ModelStore(tmp_path / "state")
    for name in RECIPES:
        sha = stage_directly(tmp_path / "state", published_bundles[name], trusted_dir / "operator.pub")
        model = smoke(store, sha, runtime, 1)  # type: ignore[arg-type]
        assert model.loaded.runtime.name == runtime
        assert model.dynamic_batch == (name in {"pose", "two_inputs", "image256", "variable_length"}), name
    sha = stage_directly(tmp_path / "state", published_bundles["custom_op"], trusted_dir / "operator.pub")
    with pytest.raises(SmokeTestError, match="custom op BesselI1e"):
        smoke(store, sha, runtime, 1)  # type: ignore[arg-type]
