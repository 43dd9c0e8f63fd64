"""Fixtures for the whole-chain tests: a real fleet and one real agent on a private broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import AgentProcess, FleetProcess, MosquittoBroker


@pytest.fixture
def stack(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> Iterator[tuple[FleetProcess, AgentProcess]]:
    """``fleet serve`` and ``agent run`` as processes, telemetry every second; stopped in reverse."""
    _, public = signing_keys
    fleet = FleetProcess(tmp_path / "fleet", broker.port, public)
    agent = AgentProcess(
        "dev-1", tmp_path / "devices", fleet.url, broker.port, public, telemetry_interval_s=1
    )
    try:
        fleet.start_and_wait()
        agent.start_and_wait()
        yield fleet, agent
    finally:
        agent.stop()
        fleet.stop()
