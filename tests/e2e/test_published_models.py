"""Models shaped like published ones, and a GRU forecaster converted from Keras, the whole way:
packed by ``edgefleet bundle`` (the converter's runtime validation and smoke samples) or written
by ``edgefleet convert``, pushed to a real fleet, deployed to a real agent (download, verify,
smoke, activate, probation), then asked over HTTP: every output equals the runtime run directly,
in JSON and ``.npz``, for 1 and 3 instances; malformed requests of every kind are answered 4xx,
and afterwards the agent is alive, healthy and still right."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from protocol.bundle import read_bundle
from protocol.signing import TrustedKeys
from tests.support.chain_models import ChainModel
from tests.support.processes import AgentProcess, FleetProcess, push_and_deploy
from tests.support.published_models import raw_inputs
from tests.support.serving_requests import ask_and_compare, survives_malformed

pytestmark = pytest.mark.slow

MALFORMED = 200
"""Per model: every kind of malformed request ten times over (the agent's own tests send 1,000
to models it is handed directly)."""


def _serving(agent: AgentProcess) -> str | None:
    model = agent.health().get("model")
    return str(model["name"]) if isinstance(model, dict) else None


def test_models_deployed_through_the_fleet_serve_every_output_and_survive_malformed_requests(
    quick_stack: tuple[FleetProcess, AgentProcess],
    signing_keys: tuple[Path, Path],
    chain_models: dict[str, ChainModel],
) -> None:
    fleet, agent = quick_stack
    _, public = signing_keys
    runtime = agent.settings.get("runtime", {}).get("kind", "auto")  # the agent's; the same here
    assert {m.command for m in chain_models.values()} == {"bundle", "convert"}
    for name, model in chain_models.items():
        manifest = read_bundle(model.bundle).verify(TrustedKeys.from_paths([public]))
        if name == "two_inputs":  # bundled with evaluation data: validated, with a baseline
            assert len(manifest.inputs) == 2 and manifest.validation is not None, manifest
            assert manifest.baseline is not None and manifest.labels, manifest
        if name == "gru_convert":  # batch fixed at 1: 3 instances are 3 invokes, never a resize
            assert manifest.inputs[0].fixed_batch == 1, manifest.inputs
        push_and_deploy(fleet.url, model.bundle, manifest.name, manifest.version)
        wanted = manifest.name
        agent.wait_until(lambda: _serving(agent) == wanted, f"{name} to serve", 120)  # noqa: B023 - used at once
        good = raw_inputs(manifest.inputs, 3, seed=11)
        with requests.Session() as session:
            ask_and_compare(session, agent.url, manifest, model.tflite, good, runtime=runtime)
            survives_malformed(session, agent.url, manifest, good, count=MALFORMED, alive=lambda: agent.alive)
            ask_and_compare(session, agent.url, manifest, model.tflite, good, runtime=runtime)
        # Probation watched the model through those requests and committed it (no rollback).
        agent.wait_until(
            lambda: agent.health().get("update_state") == "idle" and _serving(agent) == wanted,  # noqa: B023
            f"{name} to pass probation and commit",
            60,
        )
