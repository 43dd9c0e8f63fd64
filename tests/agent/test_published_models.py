"""Models shaped like published ones, deployed to a real agent process and asked over HTTP.

Each model goes the whole device path (download, verify, smoke test through
``runtime.run_samples``, activate) and then answers 1 and 3 instances in JSON and in ``.npz``
with every output equal to the runtime run directly; 1,000 malformed requests later the process
is alive, health is ok and the next good request is right. A model with a custom op is refused
by name and never serves.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

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
    published_bundle,
    published_folder,
    raw_inputs,
)
from tests.support.serving_requests import ask_and_compare, survives_malformed

__all__ = ["published_folder"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

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


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_published_model_serves_every_output_and_survives_malformed_requests(
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
        ask_and_compare(session, agent.url, manifest, tflite, good, runtime="tflite-runtime")
        survives_malformed(session, agent.url, manifest, good, count=MALFORMED, alive=lambda: agent.alive)
        ask_and_compare(session, agent.url, manifest, tflite, good, runtime="tflite-runtime")


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
