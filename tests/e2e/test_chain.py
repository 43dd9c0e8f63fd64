"""The whole chain with real parts: a Mosquitto the test starts, the fleet and an agent as real
processes, bundles converted by the real converter, real HTTP and a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edgefleet.stack import convert_digits
from protocol.bundle import read_bundle
from protocol.samples import read_samples
from protocol.signing import TrustedKeys
from protocol.tensors import dequantize
from tests.support.processes import AgentProcess, FleetProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def _convert(model_dir: Path, version: str, key: Path, out: Path) -> Path:
    bundle = out / f"digits-{version}.bundle"
    convert_digits(model_dir, version, key, bundle)
    return bundle


def _push(fleet: FleetProcess, data: bytes) -> requests.Response:
    return requests.post(
        f"{fleet.url}/api/v1/models",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )


def _deploy(fleet: FleetProcess, version: str) -> None:
    response = requests.post(
        f"{fleet.url}/api/v1/deployments",
        json={"name": "digits", "version": version, "device_id": None},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def _telemetry_latencies(db: Path, device_id: str) -> list[float]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT latency_p50 FROM telemetry WHERE device_id = ? AND requests > 0", (device_id,)
        ).fetchall()
    return [row[0] for row in rows if row[0] is not None]


def test_convert_deploy_watch_update_and_refuse_a_tampered_bundle(
    tmp_path: Path,
    stack: tuple[FleetProcess, AgentProcess],
    signing_keys: tuple[Path, Path],
    digits_model: Path,
    digits_model_v2: Path,
) -> None:
    fleet, agent = stack
    key, public = signing_keys
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    v1 = _convert(digits_model, "1.0.0", key, bundles)
    v2 = _convert(digits_model_v2, "2.0.0", key, bundles)
    v3 = _convert(digits_model, "3.0.0", key, bundles)

    # Deploy v1: the agent installs it and reproduces the converter's recorded outputs.
    assert _push(fleet, v1.read_bytes()).status_code == 201
    _deploy(fleet, "1.0.0")
    agent.wait_for_version("1.0.0")
    bundle = read_bundle(v1)
    manifest = bundle.verify(TrustedKeys.from_paths([public]))
    samples = read_samples(bundle.members["samples.npz"])
    # The samples hold what the input tensor receives (int8 here); a caller sends real values.
    x = dequantize(samples.inputs[0], manifest.inputs[0])
    response = requests.post(f"{agent.url}/v1/predict", json={"inputs": x.tolist()}, timeout=10)
    assert response.status_code == 200, response.text
    outputs = np.asarray(response.json()["outputs"], dtype=np.float32)
    np.testing.assert_allclose(outputs, samples.outputs[0], atol=manifest.smoke.atol, rtol=0)
    assert response.json()["model"] == {"name": "digits", "version": "1.0.0"}

    # Telemetry for the device reaches SQLite with a non-zero latency.
    for _ in range(20):
        requests.post(f"{agent.url}/v1/predict", json={"inputs": x[0].tolist()}, timeout=10)
    latencies = wait_until(
        lambda: _telemetry_latencies(fleet.db_path, "dev-1"), "telemetry rows in SQLite", 60, 0.2
    )
    assert all(latency > 0 for latency in latencies)

    # Deploy v2: the agent switches.
    assert _push(fleet, v2.read_bytes()).status_code == 201
    _deploy(fleet, "2.0.0")
    agent.wait_for_version("2.0.0")

    # A v3 with a flipped byte is refused by the fleet at upload, naming the check.
    data = bytearray(v3.read_bytes())
    model_offset = data.find(b"TFL3")
    assert model_offset > 0
    data[model_offset + 200] ^= 0xFF
    refused = _push(fleet, bytes(data))
    assert refused.status_code == 400
    assert "model.tflite does not match its sha256" in refused.json()["detail"]

    # A v3 corrupted in the fleet's artifact store after upload is refused by the agent,
    # which keeps serving v2.
    assert _push(fleet, v3.read_bytes()).status_code == 201
    stored = tmp_path / "fleet" / "artifacts" / "digits" / "3.0.0.bundle"
    corrupted = bytearray(stored.read_bytes())
    corrupted[corrupted.find(b"TFL3") + 200] ^= 0xFF
    stored.write_bytes(bytes(corrupted))
    _deploy(fleet, "3.0.0")

    def refusal() -> dict[str, Any] | None:
        events = requests.get(f"{fleet.url}/api/v1/devices/dev-1/events?limit=50", timeout=5).json()
        failed = [
            e for e in events if e.get("target", {}).get("version") == "3.0.0" and not e.get("ok", True)
        ]
        return failed[0] if failed else None

    event = wait_until(refusal, "the agent to report refusing 3.0.0", 60, 0.2)
    assert "sha256" in (event.get("reason") or "")
    assert agent.serving_version() == "2.0.0"
    response = requests.post(f"{agent.url}/v1/predict", json={"inputs": x[0].tolist()}, timeout=10)
    assert response.status_code == 200
    assert response.json()["model"]["version"] == "2.0.0"
