"""Data capture with real parts: a Mosquitto the test starts and stops, the fleet and an agent as
real processes, a digits bundle from the real converter. Samples survive a broker outage, a fleet
restart and an agent restart with the counts exact; the export feeds ``edgefleet convert``; the
fleet's policy switches capture off and on again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edgefleet.stack import convert_digits, run_edgefleet
from tests.support.processes import AgentProcess, FleetProcess, MosquittoBroker
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

CAPTURE = {"enabled": True, "rate": 1.0, "upload_interval_s": 0.3, "batch_size": 40}


def _summary(fleet: FleetProcess) -> dict[str, Any]:
    response = requests.get(f"{fleet.url}/api/v1/capture", timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _count(fleet: FleetProcess) -> int:
    return sum(m["samples"] for m in _summary(fleet)["models"])


def _predict(agent: AgentProcess, batches: list[np.ndarray[Any, Any]]) -> None:
    for x in batches:
        response = requests.post(f"{agent.url}/v1/predict", json={"inputs": x.tolist()}, timeout=10)
        assert response.status_code == 200, response.text


def _wait_count(fleet: FleetProcess, expected: int, timeout_s: float = 60) -> None:
    wait_until(lambda: _count(fleet) == expected or None, f"{expected} samples at the fleet", timeout_s, 0.2)


def _deploy(fleet: FleetProcess, bundle: Path) -> None:
    pushed = requests.post(
        f"{fleet.url}/api/v1/models",
        data=bundle.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert pushed.status_code == 201, pushed.text
    deployed = requests.post(
        f"{fleet.url}/api/v1/deployments",
        json={"name": "digits", "version": "1.0.0", "device_id": None},
        timeout=10,
    )
    assert deployed.status_code == 200, deployed.text


def _export_and_convert(
    fleet: FleetProcess, tmp_path: Path, served: np.ndarray[Any, Any], digits_model: Path, key: Path
) -> None:
    """Exported in capture order, exactly what was served; convert takes it as calibration."""
    out = tmp_path / "captured.npz"
    run_edgefleet(["capture", "export", "digits", "1.0.0", "--out", str(out), "--fleet", fleet.url])
    with np.load(out) as exported:
        np.testing.assert_array_equal(exported["x"], served)
        assert exported["predicted"].shape == (len(served), 10)
    retrained = tmp_path / "digits-1.1.0.bundle"
    report = run_edgefleet(
        ["convert", str(digits_model / "model.keras"),
         "--calibration", str(out),
         "--evaluation", str(digits_model / "evaluation.npz"),
         "--labels", str(digits_model / "labels.txt"),
         "--mode", "int8", "--task", "classification",
         "--name", "digits", "--version", "1.1.0",
         "--key", str(key), "--out", str(retrained)],
    )  # fmt: skip
    assert retrained.is_file(), report


def test_capture_survives_outages_exports_and_converts(
    tmp_path: Path,
    broker: MosquittoBroker,
    signing_keys: tuple[Path, Path],
    digits_model: Path,
) -> None:
    key, public = signing_keys
    bundle = tmp_path / "digits-1.0.0.bundle"
    convert_digits(digits_model, "1.0.0", key, bundle)
    fleet = FleetProcess(tmp_path / "fleet", broker.port, public)
    agent = AgentProcess(
        "dev-1", tmp_path / "devices", fleet.url, broker.port, public,
        poll_interval_s=1, settings={"capture": CAPTURE},
    )  # fmt: skip
    with np.load(digits_model / "evaluation.npz") as data:
        pool = data["x"].astype(np.float32)
    sent: list[np.ndarray[Any, Any]] = []

    def batches(count: int, size: int) -> list[np.ndarray[Any, Any]]:
        start = sum(len(b) for b in sent)
        chosen = [pool[(start + i * size + np.arange(size)) % len(pool)] for i in range(count)]
        sent.extend(chosen)
        return chosen

    try:
        fleet.start_and_wait()
        agent.start_and_wait()
        _deploy(fleet, bundle)
        agent.wait_for_version("1.0.0")

        _predict(agent, batches(20, 2))
        _wait_count(fleet, 40)

        # The broker goes away: capture goes over HTTPS, serving goes on, nothing is lost.
        broker.stop()
        _predict(agent, batches(15, 2))
        _wait_count(fleet, 70)
        broker.start()

        # The fleet goes away, and the agent restarts while it is gone: samples wait on disk.
        fleet.stop()
        _predict(agent, batches(25, 2))
        agent.stop()
        agent.start_and_wait()
        _predict(agent, batches(10, 3))
        fleet.start_and_wait()
        _wait_count(fleet, 150)
        summary = _summary(fleet)
        assert summary["dropped"] == {"dev-1": 0}
        assert summary["models"][0]["reasons"] == {"uniform": 150}

        _export_and_convert(fleet, tmp_path, np.concatenate(sent), digits_model, key)

        # The fleet's policy switches capture off on this device; removing it brings agent.toml's back.
        off = requests.put(f"{fleet.url}/api/v1/devices/dev-1/capture", json={"enabled": False}, timeout=5)
        assert off.status_code == 200, off.text
        agent.wait_for_log("capture: the fleet's policy now applies")
        _predict(agent, batches(10, 1))
        assert requests.delete(f"{fleet.url}/api/v1/devices/dev-1/capture", timeout=5).status_code == 204
        agent.wait_for_log("capture: agent.toml's policy now applies")
        _predict(agent, batches(5, 1))
        _wait_count(fleet, 155)
    finally:
        agent.stop()
        fleet.stop()
