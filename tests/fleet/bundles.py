"""Small signed bundles built directly with the protocol functions (the fleet never runs models)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.bundle import bundle_bytes, file_entries
from protocol.manifest import Manifest, QuantizationMode, SmokeTest, TaskKind, TensorSpec, ToolVersions
from protocol.signing import load_private_key, sign


def make_manifest(name: str, version: str, files: dict[str, bytes], description: str = "") -> Manifest:
    return Manifest(
        name=name,
        version=version,
        task=TaskKind.CLASSIFICATION,
        created_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        description=description,
        files=file_entries(files),
        inputs=[TensorSpec(name="input", shape=[1, 8, 8, 1], dtype="float32")],
        outputs=[TensorSpec(name="output", shape=[1, 10], dtype="float32")],
        quantization=QuantizationMode.INT8,
        tools=ToolVersions(edgefleet="0.1.0"),
        smoke=SmokeTest(samples=1, atol=0.01),
    )


def model_files(seed: bytes = b"") -> dict[str, bytes]:
    return {
        "model.tflite": b"TFL3" + seed + os.urandom(2048),
        "samples.npz": b"PK-not-really-npz" + seed,
    }


def build_bundle(
    key: Path | Ed25519PrivateKey,
    name: str = "digits",
    version: str = "1.0.0",
    files: dict[str, bytes] | None = None,
) -> bytes:
    """A signed bundle of ``name`` ``version`` whose model bytes are random unless given."""
    private = load_private_key(key) if isinstance(key, Path) else key
    files = files if files is not None else model_files()
    manifest_bytes = make_manifest(name, version, files).model_dump_json().encode()
    return bundle_bytes(manifest_bytes, sign(private, manifest_bytes), files)


def bundle_with_bad_signature(key: Path, name: str = "digits", version: str = "1.0.0") -> bytes:
    """The signature is over one manifest, the bundle carries another (altered after signing)."""
    private = load_private_key(key)
    files = model_files()
    signed = make_manifest(name, version, files).model_dump_json().encode()
    altered = make_manifest(name, version, files, description="altered").model_dump_json().encode()
    return bundle_bytes(altered, sign(private, signed), files)


def flip_model_byte(bundle: bytes, files: dict[str, bytes]) -> bytes:
    """Flip one byte inside model.tflite's data in the archive."""
    model = files["model.tflite"]
    at = bundle.index(model) + len(model) // 2
    return bundle[:at] + bytes([bundle[at] ^ 0xFF]) + bundle[at + 1 :]
