"""What the agent's tests share besides fixtures: the device id, the signed test bundles, and a way
to put a model in the store without running the updater."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.store import ActivePointer, ModelStore
from protocol.bundle import read_bundle
from protocol.signing import TrustedKeys, generate_private_key, load_private_key
from tests.agent.bundles import build_bundle

DEVICE = "dev-1"

BUNDLES_ENV = "EDGEFLEET_TEST_BUNDLES"
"""A folder written by ``python -m tests.agent.export_bundles``: where TensorFlow cannot run (the
emulated aarch64 stage), the agent's tests use bundles and keys made on the host."""


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


def exported_bundles() -> Path | None:
    """The folder named by ``EDGEFLEET_TEST_BUNDLES``, if set."""
    folder = os.environ.get(BUNDLES_ENV)
    return Path(folder) if folder else None


def load_exported(folder: Path) -> Bundles:
    return Bundles(
        v1=(folder / "v1.bundle").read_bytes(),
        v2=(folder / "v2.bundle").read_bytes(),
        untrusted=(folder / "untrusted.bundle").read_bytes(),
        smoke_bad=(folder / "smoke_bad.bundle").read_bytes(),
        samples_x=np.load(folder / "samples_x.npy"),
    )


def make_bundles(v1: bytes, v2: bytes, digits_model: Path, private_key: Path) -> Bundles:
    """The four bundles the agent's tests deploy, signed with ``private_key`` (``untrusted`` with a
    fresh key; ``smoke_bad`` with smoke samples that its model cannot reproduce)."""
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


def stage_directly(state_dir: Path, bundle: bytes, trusted: Path, *, activate: bool = True) -> str:
    """Put a verified bundle into the store (and make it active) without the updater."""
    store = ModelStore(state_dir).open()
    parsed = read_bundle(io.BytesIO(bundle))
    parsed.verify(TrustedKeys.from_paths([trusted]))
    sha = Bundles.sha(bundle)
    store.stage(sha, parsed.manifest_bytes, parsed.signature.model_dump_json().encode(), parsed.members)
    if activate:
        pointer = store.read_pointer()
        store.write_pointer(ActivePointer(active=sha, previous=pointer.active))
    return sha
