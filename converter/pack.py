"""Manifest, signature and archive: the last step, and the only one that writes the output."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from converter.errors import InputError, OutputExistsError
from protocol.bundle import LABELS, MODEL, SAMPLES, bundle_bytes, file_entries, write_atomically
from protocol.manifest import Manifest
from protocol.signing import Signature, sign


def member_files(model: bytes, samples: bytes, labels: bytes | None) -> dict[str, bytes]:
    files = {MODEL: model, SAMPLES: samples}
    if labels is not None:
        files[LABELS] = labels
    return files


def manifest_json(manifest: Manifest) -> bytes:
    return manifest.model_dump_json(indent=2, exclude_none=True).encode("utf-8")


def check_output_free(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_file():
        raise InputError(f"{out} exists and is not a file")
    if not out.parent.is_dir():
        raise InputError(f"the output directory {out.parent} does not exist")


def write_bundle(
    out: Path, manifest: Manifest, files: dict[str, bytes], key: Ed25519PrivateKey, force: bool
) -> tuple[bytes, Signature]:
    """Sign the exact manifest bytes, pack, and write atomically; return (manifest bytes, signature)."""
    if set(manifest.files) != set(files) or manifest.files != file_entries(files):
        raise ValueError("the manifest's file table does not match the files being packed")
    data = manifest_json(manifest)
    signature = sign(key, data)
    archive = bundle_bytes(data, signature, files)
    check_output_free(out, force)
    try:
        write_atomically(out, archive)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror}") from exc
    return data, signature
