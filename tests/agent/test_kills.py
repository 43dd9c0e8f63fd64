"""The agent process killed (SIGKILL) in every update state comes back serving a model.

The update machine is made to hang right after it saved the state (``EDGEFLEET_FAULT_HANG_IN``),
the process is killed there, and a fresh process (without the hook) starts on the same state
directory: from its first answer it serves a model, and it ends idle with the old or the new one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from edgefleet.mosquitto import free_port
from tests.agent.conftest import DEVICE, Bundles, config_toml, stage_directly
from tests.agent.peer import FleetPeer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# state the process is killed in -> (bundle deployed, version served in the end)
OUTCOME = {
    "download": ("v2", "2.0.0"),
    "verify": ("v2", "2.0.0"),
    "stage": ("v2", "2.0.0"),
    "smoke": ("v2", "2.0.0"),
    "activate": ("v2", "1.0.0"),  # rolled back: the new model may be what killed the process
    "probation": ("v2", "2.0.0"),  # watched again, then committed
    "commit": ("v2", "2.0.0"),
    "rollback": ("smoke_bad", "1.0.0"),
    "failed": ("smoke_bad", "1.0.0"),
}


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout_s}s")


def _saved_state(state_dir: Path) -> str | None:
    try:
        return str(json.loads((state_dir / "update.json").read_text())["state"])
    except (OSError, ValueError, KeyError):
        return None


def _health(port: int) -> dict[str, object] | None:
    try:
        return dict(requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json())
    except requests.RequestException:
        return None


@pytest.mark.parametrize("state", list(OUTCOME))
def test_killed_in_every_update_state_comes_back_serving(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles, state: str
) -> None:
    state_dir = tmp_path / "state"
    stage_directly(state_dir, bundles.v1, trusted_dir)
    which, expected = OUTCOME[state]
    fleet_peer.deploy(DEVICE, getattr(bundles, which), "digits", "2.0.0")
    port = free_port()
    config = tmp_path / "agent.toml"
    # probation_s=0: the new model commits as soon as it is watched (mqtt port 1: no broker)
    config.write_text(
        config_toml(state_dir, trusted_dir, fleet_peer.url).replace("port = 0", f"port = {port}")
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(
            command, env={**env, "EDGEFLEET_FAULT_HANG_IN": state}, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        _wait(lambda: _saved_state(state_dir) == state, f"the agent to reach {state}")
    finally:
        first.kill()
        first.wait(10)

    answers: list[dict[str, object]] = []
    with open(tmp_path / "second.log", "wb") as log:
        second = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:

        def settled() -> bool:
            health = _health(port)
            if health is not None:
                answers.append(health)
            return (
                health is not None
                and health["update_state"] == "idle"
                and isinstance(health["model"], dict)
                and health["model"]["version"] == expected
            )

        _wait(settled, f"the restarted agent to settle on {expected}")
    finally:
        second.terminate()
        second.wait(15)
    assert answers and all(a["model"] is not None for a in answers), answers  # never without a model
    assert _saved_state(state_dir) == "idle"
