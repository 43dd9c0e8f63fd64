"""The programs the tests run as real processes: Mosquitto, ``fleet serve`` and ``agent run``.

The launchers are the demo's own (``edgefleet.mosquitto``, ``edgefleet.stack``), so the tests also
exercise what the demo and the benchmarks start; this module adds the tests' defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from edgefleet.agent_toml import merged
from edgefleet.mosquitto import MosquittoBroker, free_port
from edgefleet.stack import (
    ENTRY,
    AgentProcess,
    FleetProcess,
    ManagedProcess,
    StackError,
    fleet_serve_args,
    http_ok,
)
from tests.support.agent import DEVICE
from tests.support.toml import TEST_SETTINGS

__all__ = [
    "ENTRY",
    "ROOT",
    "AgentProcess",
    "FleetProcess",
    "ManagedProcess",
    "MosquittoBroker",
    "StackError",
    "agent_process",
    "fleet_serve_args",
    "free_port",
    "http_ok",
    "push_and_deploy",
]

ROOT = Path(__file__).resolve().parents[2]
"""The repository: children import this tree's parts whatever their working directory."""


def agent_process(  # noqa: PLR0913 - one keyword-only parameter per agent setting tests vary
    workdir: Path,
    fleet_url: str,
    trusted: Path,
    *,
    mqtt_port: int = 1,
    device_id: str = DEVICE,
    settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str | None] | None = None,
    module: str = ENTRY,
    log_name: str = "agent.log",
) -> AgentProcess:
    """``agent run`` (not started) with ``tests.support.toml.TEST_SETTINGS`` and then ``settings``;
    its files are under ``workdir/<device_id>``. ``mqtt_port=1``: no broker."""
    return AgentProcess(
        device_id,
        workdir,
        fleet_url,
        mqtt_port,
        trusted,
        settings=merged(TEST_SETTINGS, settings or {}),
        env={"PYTHONPATH": str(ROOT), **(env or {})},
        module=module,
        log_name=log_name,
    )


def push_and_deploy(fleet_url: str, bundle: Path, name: str, version: str) -> None:
    """Upload a bundle to a running fleet and make it every device's model (the fleet default)."""
    pushed = requests.post(
        f"{fleet_url}/api/v1/models",
        data=bundle.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert pushed.status_code == 201, f"{name} {version}: {pushed.text}"
    deployed = requests.post(
        f"{fleet_url}/api/v1/deployments",
        json={"name": name, "version": version, "device_id": None},
        timeout=10,
    )
    assert deployed.status_code == 200, f"{name} {version}: {deployed.text}"
