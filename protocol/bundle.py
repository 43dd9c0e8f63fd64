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

from protocol.bundle_tar import MemberSpan, scan_members
from protocol.errors import BundleError
from protocol.manifest import FileEntry, Manifest
from protocol.samples import SmokeSamples, read_samples, write_samples
from protocol.signing import Signature, TrustedKeys, parse_signature
from protocol.validation import describe_first_error

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.tflite"
SAMPLES = "samples.npz"
LABELS = "labels.txt"
ALLOWED_MEMBERS = frozenset({MANIFEST, SIGNATURE, MODEL, SAMPLES, LABELS})
BUNDLE_SUFFIX = ".bundle"

__all__ = [
    "ALLOWED_MEMBERS",
    "BUNDLE_SUFFIX",
    "DEFAULT_MAX_BUNDLE_BYTES",
    "LABELS",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "MODEL",
    "SAMPLES",
    "SIGNATURE",
    "SMALL_MEMBERS",
    "Bundle",
    "SmokeSamples",
    "bundle_bytes",
    "file_entries",
    "parse_manifest",
    "read_bundle",
    "read_samples",
    "sha256_hex",
    "write_atomically",
    "write_samples",
]

DEFAULT_MAX_BUNDLE_BYTES = 512 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
SMALL_MEMBERS = {MANIFEST: MAX_MANIFEST_BYTES, SIGNATURE: MAX_MANIFEST_BYTES}
"""Members read whole before the signature is checked, so they are bounded by their header."""


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
        raise BundleError(
            f"manifest.json is not a valid edgefleet manifest: {describe_first_error(exc, 'manifest')}"
        ) from exc


def read_bundle(source: Path | BinaryIO, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> Bundle:
    """Read a whole bundle into memory, for callers that need its bytes (the converter, tests).

    Every header is checked before any data is read (``protocol.bundle_tar``). To verify a
    bundle on disk in bounded memory, use ``protocol.bundle_stream.bundle_file``.
    """
    label = str(source) if isinstance(source, Path) else "the bundle"
    if isinstance(source, Path):
        try:
            with open(source, "rb") as handle:
                return _read(handle, label, max_bytes)
        except FileNotFoundError as exc:
            raise BundleError(f"{label} does not exist") from exc
        except OSError as exc:
            raise BundleError(f"cannot read {label}: {exc}") from exc
    return _read(source, label, max_bytes)


def scan_bundle(handle: BinaryIO, label: str, max_bytes: int) -> dict[str, MemberSpan]:
    """Every member's place in the archive, from the headers alone (no member data is read):
    refuses an oversize file, a member that is not a regular flat file of a known name, and a
    bundle without a manifest or a signature."""
    try:
        size = handle.seek(0, os.SEEK_END)
    except OSError as exc:
        raise BundleError(f"cannot read {label}: {exc}") from exc
    if size > max_bytes:
        raise BundleError(f"{label} is larger than the {max_bytes} byte limit")
    spans = scan_members(
        handle, label, size, allowed=ALLOWED_MEMBERS, small=SMALL_MEMBERS, max_bytes=max_bytes
    )
    if MANIFEST not in spans:
        raise BundleError(f"{label} has no manifest.json")
    if SIGNATURE not in spans:
        raise BundleError(f"{label} has no manifest.sig: it was never signed")
    return spans


def _read(handle: BinaryIO, label: str, max_bytes: int) -> Bundle:
    spans = scan_bundle(handle, label, max_bytes)
    members: dict[str, bytes] = {}
    for name, span in spans.items():
        handle.seek(span.offset)
        members[name] = handle.read(span.size)
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
