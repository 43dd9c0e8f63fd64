"""Verify a bundle file in bounded memory: headers first, the signature before any data, then each
member hashed in chunks against its size and sha256 in the signed manifest.

``read_bundle`` (``protocol.bundle``) reads every member into memory; the fleet's upload path and
the agent's update worker use ``bundle_file`` / ``verify_bundle`` instead, so an upload of hundreds of MiB, or
a hostile archive whose members claim gigabytes, costs a few MiB whatever it holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from protocol.bundle import (
    DEFAULT_MAX_BUNDLE_BYTES,
    MANIFEST,
    SIGNATURE,
    parse_manifest,
    scan_bundle,
)
from protocol.bundle_tar import MemberSpan
from protocol.errors import BundleError
from protocol.manifest import FileEntry, Manifest
from protocol.signing import Signature, TrustedKeys, parse_signature

CHUNK = 1024 * 1024

__all__ = ["CHUNK", "BundleFile", "bundle_file", "open_bundle_file", "verify_bundle"]


@dataclass(frozen=True)
class BundleFile:
    """A bundle on disk: its manifest and signature read, its other members only located."""

    handle: BinaryIO
    label: str
    manifest_bytes: bytes
    signature: Signature
    manifest: Manifest
    spans: dict[str, MemberSpan]
    """Every member but manifest.json and manifest.sig, by name."""

    def check_listing(self) -> None:
        listed = set(self.manifest.files)
        present = set(self.spans)
        if missing := sorted(listed - present):
            raise BundleError(f"the bundle lacks files its manifest lists: {', '.join(missing)}")
        if extra := sorted(present - listed):
            raise BundleError(f"the bundle holds files its manifest does not list: {', '.join(extra)}")

    def check_member(self, name: str) -> None:
        """Hash ``name`` in chunks; BundleError unless its size and sha256 match the manifest."""
        self.copy_member(name, None)

    def read_member(self, name: str) -> bytes:
        """``name``'s bytes (at most the size the signed manifest gives it), hash checked."""
        parts: list[bytes] = []
        self.copy_member(name, parts.append)
        return b"".join(parts)

    def copy_member(self, name: str, write: Callable[[bytes], object] | None) -> None:
        """Pass ``name``'s data to ``write`` in chunks while hashing it; raise BundleError (after
        the last chunk) when it does not match its manifest entry, so a caller writing to a
        temporary file must discard it on error."""
        entry = self._entry(name)
        span = self.spans[name]
        if span.size != entry.size:
            relation = "larger" if span.size > entry.size else "smaller"
            raise BundleError(
                f"{name} is {span.size} bytes, {relation} than the {entry.size} its manifest entry "
                "says: the bundle is corrupt or was altered"
            )
        digest = hashlib.sha256()
        try:
            self.handle.seek(span.offset)
            left = span.size
            while left:
                chunk = self.handle.read(min(CHUNK, left))
                if not chunk:
                    raise BundleError(f"{self.label} is truncated inside {name}")
                left -= len(chunk)
                digest.update(chunk)
                if write is not None:
                    write(chunk)
        except OSError as exc:
            raise BundleError(f"cannot read {name} from {self.label}: {exc}") from exc
        if digest.hexdigest() != entry.sha256:
            raise BundleError(
                f"{name} does not match its sha256 in the manifest: the bundle is corrupt or was altered"
            )

    def _entry(self, name: str) -> FileEntry:
        entry = self.manifest.files.get(name)
        if entry is None or name not in self.spans:
            raise BundleError(f"{self.label} has no {name} listed in its manifest")
        return entry


def open_bundle_file(handle: BinaryIO, label: str, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> BundleFile:
    """Check every header and read the manifest and signature; nothing is verified yet."""
    spans = scan_bundle(handle, label, max_bytes)
    manifest_bytes = _read_small(handle, label, spans.pop(MANIFEST))
    signature = parse_signature(_read_small(handle, label, spans.pop(SIGNATURE)))
    manifest = parse_manifest(manifest_bytes)
    return BundleFile(handle, label, manifest_bytes, signature, manifest, spans)


def verify_bundle(handle: BinaryIO, trusted: TrustedKeys, label: str, max_bytes: int) -> BundleFile:
    """The signature by a trusted key first, then every member's size and sha256 in chunks."""
    bundle = open_bundle_file(handle, label, max_bytes)
    trusted.verify(bundle.manifest_bytes, bundle.signature)
    bundle.check_listing()
    for name in sorted(bundle.spans, key=lambda member: bundle.spans[member].offset):
        bundle.check_member(name)
    return bundle


@contextmanager
def bundle_file(
    path: Path, trusted: TrustedKeys | None = None, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
) -> Iterator[BundleFile]:
    """The bundle at ``path``, open while the ``with`` lasts: verified by ``verify_bundle`` when
    ``trusted`` is given, else only located (``open_bundle_file``)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the caller's block
    except FileNotFoundError as exc:
        raise BundleError(f"{path} does not exist") from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    with handle:
        if trusted is None:
            yield open_bundle_file(handle, str(path), max_bytes)
        else:
            yield verify_bundle(handle, trusted, str(path), max_bytes)


def _read_small(handle: BinaryIO, label: str, span: MemberSpan) -> bytes:
    try:
        handle.seek(span.offset)
        data = handle.read(span.size)
    except OSError as exc:
        raise BundleError(f"cannot read {span.name} from {label}: {exc}") from exc
    if len(data) != span.size:
        raise BundleError(f"{label} is truncated inside {span.name}")
    return data
