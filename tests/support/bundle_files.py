"""Small signed bundles built member by member, for the bundle codec's tests (``tests/protocol``)
and the agent's verify step (``tests/agent/test_verify_stream.py``): a pretend model, tar archives
packed by hand, and hostile archives (a sparse member, a member claiming a gibibyte)."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime
from pathlib import Path

from protocol.bundle import bundle_bytes, file_entries
from protocol.manifest import Manifest, QuantizationMode, SmokeTest, TaskKind, TensorSpec, ToolVersions
from protocol.signing import TrustedKeys, generate_private_key, sign

GIB = 1 << 30
FILES = {"model.tflite": b"\x00TFL3 pretend flatbuffer", "samples.npz": b"pretend samples"}
"""A bundle's files with pretend contents: the codec checks hashes, never parses them."""


def manifest_bytes(files: dict[str, bytes]) -> bytes:
    """A valid manifest listing ``files`` with their hashes."""
    manifest = Manifest(
        name="digits",
        version="1.0.0",
        task=TaskKind.CLASSIFICATION,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        files=file_entries(files),
        inputs=[TensorSpec(name="x", shape=[1, 4], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[1, 2], dtype="float32")],
        quantization=QuantizationMode.NONE,
        tools=ToolVersions(edgefleet="test"),
        smoke=SmokeTest(samples=1, atol=0.0),
    )
    return manifest.model_dump_json().encode()


def signed_bundle(files: dict[str, bytes] = FILES) -> tuple[bytes, TrustedKeys]:
    """A bundle of ``files`` signed with a fresh key, and the keys that trust it."""
    key = generate_private_key()
    manifest = manifest_bytes(files)
    return bundle_bytes(manifest, sign(key, manifest), files), TrustedKeys([key.public_key()])


def signed_members(files: dict[str, bytes] = FILES) -> tuple[bytes, bytes, TrustedKeys]:
    """(manifest.json, manifest.sig, the keys that trust it) for ``files``, to pack by hand."""
    key = generate_private_key()
    manifest = manifest_bytes(files)
    return manifest, sign(key, manifest).model_dump_json().encode(), TrustedKeys([key.public_key()])


def member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def pack(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A PAX tar of ``members`` in the order given (the codec must not depend on it)."""
    with tarfile.open(path, mode="w:", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data))
    return path


def _gnu_sparse_header(name: str, real_size: int) -> bytes:
    """An old-GNU sparse header ('S') whose one data block sits at the end of ``real_size`` bytes:
    tar expands it to ``real_size`` bytes of zeros from a 512-byte archive member."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 512
    block = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    block[386:398] = b"%011o\0" % (real_size - 512)  # sparse[0].offset
    block[398:410] = b"%011o\0" % 512  # sparse[0].numbytes
    block[483:495] = b"%011o\0" % real_size  # realsize
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def sparse_bundle(path: Path, kind: str) -> Path:
    """A bundle whose model.tflite is a sparse member tar expands to 1 GiB: ``kind`` "gnu" (an
    old-GNU header) or "pax" (PAX sparse 1.0)."""
    manifest, signature, _ = signed_members()
    pack(path, [member("manifest.json", manifest), member("manifest.sig", signature)])
    data = path.read_bytes().rstrip(b"\0")
    data += b"\0" * (-len(data) % 512)
    if kind == "gnu":
        sparse = _gnu_sparse_header("model.tflite", GIB) + b"\x01" * 512
    else:  # PAX sparse 1.0: the map and data follow in a regular-looking member
        info = tarfile.TarInfo("GNUSparseFile.0/model.tflite")
        info.size = 1024
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": "model.tflite",
            "GNU.sparse.realsize": str(GIB),
        }
        sparse = info.tobuf(format=tarfile.PAX_FORMAT) + b"1\n%d\n512\n" % (GIB - 512) + b"\0" * 1014
    path.write_bytes(data + sparse + b"\0" * 1024)
    return path


def huge_model_bundle(path: Path, key_trusted: bool, claimed: int = GIB) -> tuple[Path, TrustedKeys]:
    """A bundle whose model.tflite claims ``claimed`` bytes (a file with a hole: nothing on disk)."""
    files = {"model.tflite": b"\0" * 16, "samples.npz": FILES["samples.npz"]}
    manifest, signature, trusted = signed_members(files)
    pack(path, [member("manifest.json", manifest), member("manifest.sig", signature)])
    head = path.read_bytes().rstrip(b"\0")
    head += b"\0" * (-len(head) % 512)
    model = tarfile.TarInfo("model.tflite")
    model.size = claimed
    samples, data = member("samples.npz", files["samples.npz"])
    with open(path, "wb") as handle:
        handle.write(head + model.tobuf(format=tarfile.PAX_FORMAT))
        handle.seek(claimed, io.SEEK_CUR)
        handle.write(samples.tobuf(format=tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512 + 1024))
    return path, trusted if key_trusted else TrustedKeys([generate_private_key().public_key()])
