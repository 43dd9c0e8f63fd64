"""A rollout with a device powered off, with real parts: a Mosquitto the test starts, ``fleet
serve`` and three ``agent run`` processes, real signed bundles over real HTTP.

The stopped device does not fail the ``--all`` rollout: the two others install, pass the gates and
commit; the rollout waits for the third, which installs the model once it is started again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from edgefleet.mosquitto import MosquittoBroker
from tests.agent.bundles import convert_to_tflite
from tests.support.agent import Bundles, make_bundles
from tests.support.processes import AgentProcess, FleetProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

DEVICES = ["dev-1", "dev-2", "dev-3"]


@pytest.fixture(scope="module")
def digit_bundles(
    digits_model: Path,
    digits_model_v2: Path,
    signing_keys: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Bundles:
    out = tmp_path_factory.mktemp("rollout-tflite")
    convert_to_tflite(
        [(digits_model, "int8", out / "v1.tflite"), (digits_model_v2, "int8", out / "v2.tflite")]
    )
    v1, v2 = (out / "v1.tflite").read_bytes(), (out / "v2.tflite").read_bytes()
    return make_bundles(v1, v2, digits_model, signing_keys[0])


@pytest.fixture
def fleet_and_agents(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> Iterator[tuple[FleetProcess, dict[str, AgentProcess]]]:
    public = signing_keys[1]
    fleet = FleetProcess(tmp_path / "fleet", broker.port, public, extra=["--rollout-tick", "0.5"])
    agents = {
        device_id: AgentProcess(
            device_id,
            tmp_path / "devices",
            fleet.url,
            broker.port,
            public,
            telemetry_interval_s=1,
            probation_s=2,
        )
        for device_id in DEVICES
    }
    try:
        fleet.start_and_wait()
        fleet.wait_ingesting()
        for agent in agents.values():
            agent.start_and_wait()
        yield fleet, agents
    finally:
        for agent in agents.values():
            agent.stop()
        fleet.stop()


def _api(fleet: FleetProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = requests.request(method, f"{fleet.url}/api/v1{path}", json=body, timeout=10)
    assert response.ok, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def _push(fleet: FleetProcess, bundle: bytes) -> None:
    response = requests.post(
        f"{fleet.url}/api/v1/models",
        data=bundle,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert response.status_code == 201, response.text


def _states(fleet: FleetProcess, rollout_id: int) -> dict[str, str]:
    return {d["device_id"]: d["state"] for d in _api(fleet, "GET", f"/rollouts/{rollout_id}/devices")}


def test_an_offline_device_gets_the_model_when_it_returns(
    fleet_and_agents: tuple[FleetProcess, dict[str, AgentProcess]], digit_bundles: Bundles
) -> None:
    fleet, agents = fleet_and_agents
    _push(fleet, digit_bundles.v1)
    _push(fleet, digit_bundles.v2)
    _api(fleet, "POST", "/deployments", {"name": "digits", "version": "1.0.0", "device_id": None})
    for agent in agents.values():
        agent.wait_for_version("1.0.0")

    agents["dev-3"].stop()
    wait_until(
        lambda: _api(fleet, "GET", "/devices/dev-3")["presence"] == "offline", "dev-3 to be offline", 30, 0.2
    )
    gates = {
        "soak_s": 2,
        "min_windows_per_device": 1,
        "min_requests_per_device": 0,
        "min_windows_per_wave": 1,
        "min_requests_per_wave": 0,
    }
    rollout = _api(
        fleet,
        "POST",
        "/rollouts",
        {
            "name": "digits",
            "version": "2.0.0",
            "target": {"all": True},
            "waves": ["1", "100%"],
            "gates": gates,
        },
    )
    rollout_id = rollout["id"]

    def waiting_for_one() -> dict[str, str] | None:
        view = _api(fleet, "GET", f"/rollouts/{rollout_id}")
        assert view["state"] == "running", view["reason"]  # never rolled back, never failed
        states = _states(fleet, rollout_id)
        return states if "all waves passed" in (view["reason"] or "") else None

    wait_until(waiting_for_one, "the rollout to pass on the two online devices", 90, 0.3)

    # The last wave can pass while a device still finishes its probation: done follows its commit.
    def committed_online() -> dict[str, str] | None:
        states = _states(fleet, rollout_id)
        return None if "probation" in (states.get("dev-1"), states.get("dev-2")) else states

    states = wait_until(committed_online, "the online devices to commit", 60, 0.3)
    assert states == {"dev-1": "done", "dev-2": "done", "dev-3": "pending"}
    for device_id in ("dev-1", "dev-2"):
        assert agents[device_id].serving_version() == "2.0.0"
        device = _api(fleet, "GET", f"/devices/{device_id}")
        assert device["model"]["version"] == device["committed"]["version"] == "2.0.0"

    agents["dev-3"].start_and_wait()
    agents["dev-3"].wait_for_version("2.0.0", timeout_s=60)

    def completed() -> dict[str, Any] | None:
        view: dict[str, Any] = _api(fleet, "GET", f"/rollouts/{rollout_id}")
        return view if view["state"] == "completed" else None

    view = wait_until(completed, "the rollout to complete", 60, 0.3)
    assert view["reason"] == "completed: 3 done"
    assert _states(fleet, rollout_id) == dict.fromkeys(DEVICES, "done")
