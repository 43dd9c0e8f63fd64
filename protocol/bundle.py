"""The bundle: one tar archive a device can check before it trusts anything in it.

Members (flat names only): ``manifest.json``, ``manifest.sig``, ``model.tflite``,
``samples.npz`` and, for classifiers, ``labels.txt``. The signature covers the manifest bytes;
the manifest lists the sha256 and size of every other member, so one signature check plus one
hash per file verifies the whole bundle.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from protocol.errors import BundleError
from protocol.manifest import FileEntry, Manifest
from protocol.signing import Signature, TrustedKeys, parse_signature

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.tflite"
SAMPLES = "samples.npz"
LABELS = "labels.txt"
ALLOWED_MEMBERS = frozenset({MANIFEST, SIGNATURE, MODEL, SAMPLES, LABELS})
BUNDLE_SUFFIX = ".bundle"

DEFAULT_MAX_BUNDLE_BYTES = 512 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entries(files: dict[str, bytes]) -> dict[str, FileEntry]:
    """The manifest's ``files`` table for the given members."""
    return {name: FileEntry(sha256=sha256_hex(data), size=len(data)) for name, data in sorted(files.items())}


@dataclass(frozen=True)
class Bundle:
    """A bundle read into memory. Nothing in it is trusted until ``verify`` returns."""

    manifest_bytes: bytes
    signature: Signature
    members: dict[str, bytes]

    def verify(self, trusted: TrustedKeys) -> Manifest:
        """Check signature, manifest schema and every file hash; return the trusted manifest."""
        trusted.verify(self.manifest_bytes, self.signature)
        manifest = parse_manifest(self.manifest_bytes)
        listed = set(manifest.files)
        present = set(self.members)
        if missing := sorted(listed - present):
            raise BundleError(f"the bundle lacks files its manifest lists: {', '.join(missing)}")
        if extra := sorted(present - listed):
            raise BundleError(f"the bundle holds files its manifest does not list: {', '.join(extra)}")
        for name, entry in manifest.files.items():
            data = self.members[name]
            if len(data) != entry.size or sha256_hex(data) != entry.sha256:
                raise BundleError(
                    f"{name} does not match its sha256 in the manifest: the bundle is corrupt or was altered"
                )
        return manifest


def parse_manifest(data: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise BundleError(
            f"manifest.json is not a valid edgefleet manifest: {where}: {first['msg']}"
        ) from exc


def read_bundle(source: Path | BinaryIO, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> Bundle:
    """Read a bundle archive safely: flat regular files with known names, within size limits."""
    label = str(source) if isinstance(source, Path) else "the bundle"
    try:
        if isinstance(source, Path):
            if source.stat().st_size > max_bytes:
                raise BundleError(f"{label} is larger than the {max_bytes} byte limit")
            archive = tarfile.open(source, mode="r:")  # noqa: SIM115 - closed by the with below
        else:
            archive = tarfile.open(fileobj=source, mode="r:")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError as exc:
        raise BundleError(f"{label} does not exist") from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{label} is not a bundle (not a readable tar archive): {exc}") from exc
    members: dict[str, bytes] = {}
    total = 0
    with archive:
        try:
            for info in archive:
                name = info.name
                if name not in ALLOWED_MEMBERS:
                    raise BundleError(f"{label} holds an unexpected member {name!r}; bundles are flat")
                if not info.isreg():
                    raise BundleError(f"{label} member {name!r} is not a regular file (links are refused)")
                if name in members:
                    raise BundleError(f"{label} holds {name!r} twice")
                total += info.size
                if total > max_bytes:
                    raise BundleError(f"{label} unpacks to more than the {max_bytes} byte limit")
                if name in (MANIFEST, SIGNATURE) and info.size > MAX_MANIFEST_BYTES:
                    raise BundleError(f"{label} member {name!r} is implausibly large ({info.size} bytes)")
                handle = archive.extractfile(info)
                if handle is None:
                    raise BundleError(f"{label} member {name!r} cannot be read")
                members[name] = handle.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{label} is truncated or corrupt: {exc}") from exc
    if MANIFEST not in members:
        raise BundleError(f"{label} has no manifest.json")
    if SIGNATURE not in members:
        raise BundleError(f"{label} has no manifest.sig: it was never signed")
    manifest_bytes = members.pop(MANIFEST)
    signature = parse_signature(members.pop(SIGNATURE))
    return Bundle(manifest_bytes=manifest_bytes, signature=signature, members=members)


def bundle_bytes(manifest_bytes: bytes, signature: Signature, files: dict[str, bytes]) -> bytes:
    """Pack a bundle archive in memory with deterministic member order and metadata."""
    buffer = io.BytesIO()
    entries = [(MANIFEST, manifest_bytes), (SIGNATURE, signature.model_dump_json().encode())]
    entries += sorted(files.items())
    with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.PAX_FORMAT) as archive:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name beside ``path``, fsync, then rename: never a half file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
