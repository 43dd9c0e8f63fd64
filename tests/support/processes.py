"""The programs the tests run as real processes: Mosquitto, ``fleet serve`` and ``agent run``.

The launchers are the demo's own (``edgefleet.mosquitto``, ``edgefleet.stack``), so the tests also
exercise what the demo and the benchmarks start; this module adds the tests' defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
