"""Fixtures for the agent's tests: real TFLite models, signed bundles, a fleet stand-in."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from protocol.signing import generate_private_key, load_private_key, private_key_pem, public_key_pem
from tests.agent.bundles import build_bundle, convert_to_tflite
from tests.agent.peer import FleetPeer

DEVICE = "dev-1"


@dataclass(frozen=True)
class Bundles:
    v1: bytes
    v2: bytes
    untrusted: bytes
    smoke_bad: bytes
    samples_x: npt.NDArray[np.float32]

    @staticmethod
    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


BUNDLES_ENV = "EDGEFLEET_TEST_BUNDLES"
"""A folder written by ``python -m tests.agent.export_bundles``: where TensorFlow cannot run (the
emulated aarch64 stage), the agent's tests use bundles and keys made on the host."""


def _exported() -> Path | None:
    folder = os.environ.get(BUNDLES_ENV)
    return Path(folder) if folder else None


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private key, public key) PEM files: the exported ones, or a fresh operator key pair."""
    exported = _exported()
    if exported is not None:
        return exported / "operator.key", exported / "operator.pub"
    folder = tmp_path_factory.mktemp("keys")
    key = generate_private_key()
    private, public = folder / "operator.key", folder / "operator.pub"
    private.write_bytes(private_key_pem(key))
    public.write_bytes(public_key_pem(key.public_key()))
    return private, public


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
    exported = _exported()
    if exported is not None:
        return Bundles(
            v1=(exported / "v1.bundle").read_bytes(),
            v2=(exported / "v2.bundle").read_bytes(),
            untrusted=(exported / "untrusted.bundle").read_bytes(),
            smoke_bad=(exported / "smoke_bad.bundle").read_bytes(),
            samples_x=np.load(exported / "samples_x.npy"),
        )
    digits_model: Path = request.getfixturevalue("digits_model")
    v1, v2 = request.getfixturevalue("tflite_models")
    return make_bundles(v1, v2, digits_model, signing_keys[0])


def make_bundles(v1: bytes, v2: bytes, digits_model: Path, private_key: Path) -> Bundles:
    key = load_private_key(private_key)
    with np.load(digits_model / "evaluation.npz") as evaluation:
        x = evaluation["x"][:16].astype(np.float32)
    return Bundles(
        v1=build_bundle(v1, x, key, version="1.0.0"),
        v2=build_bundle(v2, x, key, version="2.0.0"),
        untrusted=build_bundle(v2, x, generate_private_key(), version="2.0.1"),
        smoke_bad=build_bundle(v2, x, key, version="2.0.2", spoil_samples=True),
        samples_x=x,
    )


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


def config_toml(
    state_dir: Path,
    trusted: Path,
    fleet_url: str,
    *,
    mqtt_port: int = 1,
    api_port: int = 0,
    poll_interval_s: float = 300,
    telemetry_interval_s: float = 300,
    device_id: str = DEVICE,
    probation_s: float = 0,
    extra: str = "",
) -> str:
    return f"""
device_id = "{device_id}"
state_dir = "{state_dir}"
trusted_keys = ["{trusted}"]
[fleet]
url = "{fleet_url}"
poll_interval_s = {poll_interval_s}
timeout_s = 5
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
keepalive_s = 5
[api]
host = "127.0.0.1"
port = {api_port}
[telemetry]
interval_s = {telemetry_interval_s}
[runtime]
kind = "tflite-runtime"
threads = 1
[update]
probation_s = {probation_s}
health_check_interval_s = 0.2
retry_base_s = 0.05
{extra}
"""


def stage_directly(state_dir: Path, bundle: bytes, trusted: Path, *, activate: bool = True) -> str:
    """Put a verified bundle into the store (and make it active) without the updater."""
    import io

    from agent.store import ActivePointer, ModelStore
    from protocol.bundle import read_bundle
    from protocol.signing import TrustedKeys

    store = ModelStore(state_dir).open()
    parsed = read_bundle(io.BytesIO(bundle))
    parsed.verify(TrustedKeys.from_paths([trusted]))
    sha = Bundles.sha(bundle)
    store.stage(sha, parsed.manifest_bytes, parsed.signature.model_dump_json().encode(), parsed.members)
    if activate:
        pointer = store.read_pointer()
        store.write_pointer(ActivePointer(active=sha, previous=pointer.active))
    return sha
