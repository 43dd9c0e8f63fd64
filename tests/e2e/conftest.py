"""Fixtures for the whole-chain tests: a real fleet and one real agent on a private broker, and the
bundles the converter's own commands write (each built once per session)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.chain_models import BUNDLED, ChainModel, bundle_published, convert_gru
from tests.support.processes import AgentProcess, FleetProcess, MosquittoBroker
from tests.support.published_models import published_folder

__all__ = ["published_folder"]  # the fixture, imported for pytest


@contextmanager
def _running_stack(
    workdir: Path, broker_port: int, public: Path, probation_s: float | None = None
) -> Iterator[tuple[FleetProcess, AgentProcess]]:
    fleet = FleetProcess(workdir / "fleet", broker_port, public)
    agent = AgentProcess(
        "dev-1", workdir / "devices", fleet.url, broker_port, public,
        telemetry_interval_s=1, probation_s=probation_s,
    )  # fmt: skip
    try:
        fleet.start_and_wait()
        agent.start_and_wait()
        yield fleet, agent
    finally:
        agent.stop()
        fleet.stop()


@pytest.fixture
def stack(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> Iterator[tuple[FleetProcess, AgentProcess]]:
    """``fleet serve`` and ``agent run`` as processes, telemetry every second; stopped in reverse."""
    with _running_stack(tmp_path, broker.port, signing_keys[1]) as running:
        yield running


@pytest.fixture
def quick_stack(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> Iterator[tuple[FleetProcess, AgentProcess]]:
    """``stack`` with a 5 s probation (the agent's default is 30 s): a test that deploys model
    after model waits for each to commit before the agent takes the next."""
    with _running_stack(tmp_path, broker.port, signing_keys[1], probation_s=5) as running:
        yield running


@pytest.fixture(scope="session")
def chain_models(
    published_folder: Path, signing_keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ChainModel]:
    """Every model the whole-chain serving test deploys, by name, each packed once."""
    key, _ = signing_keys
    out = tmp_path_factory.mktemp("chain-bundles")
    models = {name: bundle_published(published_folder, name, key, out) for name in BUNDLED}
    models["gru_convert"] = convert_gru(key, out)
    return models
