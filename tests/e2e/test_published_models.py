"""Ready-made TFLite models shaped like published ones, the whole way: packed by ``edgefleet
bundle`` (the converter's runtime validation and smoke samples), pushed to a real fleet, deployed
to a real agent (download, verify, smoke, activate, probation), then asked over HTTP: every
output equals the runtime run directly, in JSON and ``.npz``, for 1 and 3 instances."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import requests

from edgefleet.stack import run_edgefleet
from protocol.bundle import read_bundle
from protocol.manifest import Manifest
from protocol.signing import TrustedKeys
from tests.support.processes import AgentProcess, FleetProcess
from tests.support.published_models import expected_outputs, published_folder, raw_inputs

__all__ = ["published_folder"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

NPZ = "application/x-npz"
MODELS = {
    # name: (task, primary output): the fixed-batch int8 detector, the five-output pose model
    # with its 2-D mask, and the batch-1 GRU forecaster.
    "detector": ("regression", "output_1"),
    "pose": ("regression", "output_4"),
    "gru_forecaster": ("forecast", None),
}


def _bundle(folder: Path, name: str, key: Path, out: Path) -> Path:
    task, primary = MODELS[name]
    bundle = out / f"{name}.bundle"
    args = ["bundle", str(folder / f"{name}.tflite"), "--name", name.replace("_", "-"), "--version", "1.0.0"]
    args += ["--task", task, "--key", str(key), "--out", str(bundle)]
    run_edgefleet(args + (["--primary-output", primary] if primary else []))
    return bundle


def _serving(agent: AgentProcess) -> str | None:
    model = agent.health().get("model")
    return str(model["name"]) if isinstance(model, dict) else None


def _npz(arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _json_outputs(body: dict[str, Any], manifest: Manifest) -> list[npt.NDArray[np.float32]]:
    if len(manifest.outputs) == 1:
        return [np.asarray(body["outputs"], dtype=np.float32)]
    return [np.asarray(body["outputs"][s.name], dtype=np.float32) for s in manifest.outputs]


def test_published_shapes_deployed_through_the_fleet_serve_every_output(
    tmp_path: Path,
    stack: tuple[FleetProcess, AgentProcess],
    signing_keys: tuple[Path, Path],
    published_folder: Path,
) -> None:
    fleet, agent = stack
    key, public = signing_keys
    for name in MODELS:
        path = _bundle(published_folder, name, key, tmp_path)
        manifest = read_bundle(path).verify(TrustedKeys.from_paths([public]))
        pushed = requests.post(
            f"{fleet.url}/api/v1/models",
            data=path.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert pushed.status_code == 201, pushed.text
        deployed = requests.post(
            f"{fleet.url}/api/v1/deployments",
            json={"name": manifest.name, "version": "1.0.0", "device_id": None},
            timeout=10,
        )
        assert deployed.status_code == 200, deployed.text
        wanted = manifest.name
        agent.wait_until(lambda: _serving(agent) == wanted, f"{name} to serve", 120)  # noqa: B023 - used at once
        tflite = (published_folder / f"{name}.tflite").read_bytes()
        names = [s.name for s in manifest.inputs]
        arrays = raw_inputs(manifest.inputs, 3, seed=11)
        for count in (1, 3):
            batch = [a[:count] for a in arrays]
            expected = expected_outputs(tflite, manifest, batch, "auto")  # the agent's runtime.kind
            body = {"inputs": {n: a.tolist() for n, a in zip(names, batch, strict=True)}}
            answer = requests.post(f"{agent.url}/v1/predict", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            for got, want in zip(_json_outputs(answer.json(), manifest), expected, strict=True):
                np.testing.assert_array_equal(got, want)
            binary = requests.post(
                f"{agent.url}/v1/predict",
                data=_npz(dict(zip(names, batch, strict=True))),
                headers={"Content-Type": NPZ},
                timeout=30,
            )
            assert binary.status_code == 200, binary.text
            with np.load(io.BytesIO(binary.content)) as got_npz:
                for spec, want in zip(manifest.outputs, expected, strict=True):
                    np.testing.assert_array_equal(got_npz[spec.name], want)
