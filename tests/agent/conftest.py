"""Fixtures for the agent's tests: real TFLite models, signed bundles, a fleet stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from converter.keys import generate_key_pair
from tests.agent.bundles import convert_to_tflite
from tests.agent.peer import FleetPeer
from tests.support.agent import Bundles, exported_bundles, load_exported, make_bundles


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private key, public key) PEM files: the exported ones, or a fresh operator key pair."""
    exported = exported_bundles()
    if exported is not None:
        return exported / "operator.key", exported / "operator.pub"
    pair = generate_key_pair(tmp_path_factory.mktemp("keys"))
    return pair.private_path, pair.public_path


@pytest.fixture(scope="session")
def tflite_models(
    digits_model: Path, digits_model_v2: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[bytes, bytes]:
    out = tmp_path_factory.mktemp("tflite")
    convert_to_tflite(
        [(digits_model, "int8", out / "v1.tflite"), (digits_model_v2, "int8", out / "v2.tflite")]
    )
    return (out / "v1.tflite").read_bytes(), (out / "v2.tflite").read_bytes()


@pytest.fixture(scope="session")
def bundles(request: pytest.FixtureRequest, signing_keys: tuple[Path, Path]) -> Bundles:
    exported = exported_bundles()
    if exported is not None:
        return load_exported(exported)
    # Looked up only here: with exported bundles the session never trains or converts a model.
    digits_model: Path = request.getfixturevalue("digits_model")
    v1, v2 = request.getfixturevalue("tflite_models")
    return make_bundles(v1, v2, digits_model, signing_keys[0])


@pytest.fixture
def fleet_peer() -> Iterator[FleetPeer]:
    peer = FleetPeer().start()
    yield peer
    peer.stop()


@pytest.fixture
def trusted_dir(signing_keys: tuple[Path, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "trusted"
    folder.mkdir()
    (folder / "operator.pub").write_bytes(signing_keys[1].read_bytes())
    return folder
