"""The bundle codec refuses anything it cannot trust, and says which check failed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from protocol.bundle import Bundle, bundle_bytes, file_entries, read_bundle
from protocol.errors import BundleError, SignatureError
from protocol.signing import TrustedKeys, generate_private_key, sign
from tests.support.bundle_files import FILES, manifest_bytes, signed_bundle


def _read(data: bytes) -> Bundle:
    return read_bundle(io.BytesIO(data))


def test_a_signed_bundle_verifies_and_round_trips(tmp_path: Path) -> None:
    data, trusted = signed_bundle()
    path = tmp_path / "digits.bundle"
    path.write_bytes(data)
    manifest = read_bundle(path).verify(trusted)
    assert manifest.name == "digits"
    assert manifest.model_sha256 == file_entries(FILES)["model.tflite"].sha256
    assert read_bundle(path).members == FILES


def test_a_flipped_byte_in_the_model_is_named() -> None:
    key = generate_private_key()
    manifest = manifest_bytes(FILES)
    tampered = dict(FILES, **{"model.tflite": b"\x01" + FILES["model.tflite"][1:]})
    data = bundle_bytes(manifest, sign(key, manifest), tampered)
    with pytest.raises(BundleError, match=r"model\.tflite does not match its sha256"):
        _read(data).verify(TrustedKeys([key.public_key()]))


def test_an_altered_manifest_fails_the_signature() -> None:
    key = generate_private_key()
    manifest = manifest_bytes(FILES)
    signature = sign(key, manifest)
    altered = manifest.replace(b'"1.0.0"', b'"9.0.0"')
    data = bundle_bytes(altered, signature, FILES)
    with pytest.raises(SignatureError, match="does not match key"):
        _read(data).verify(TrustedKeys([key.public_key()]))


def test_an_unknown_key_is_named() -> None:
    data, _ = signed_bundle()
    other = TrustedKeys([generate_private_key().public_key()])
    with pytest.raises(SignatureError, match="not trusted here"):
        _read(data).verify(other)


def _tar(*entries: tarfile.TarInfo, payload: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        for info in entries:
            if info.isreg():
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
            else:
                archive.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../etc/passwd", "unexpected member"),
        ("/etc/passwd", "unexpected member"),
        ("models/model.tflite", "unexpected member"),
        ("d" * 120 + "/model.tflite", "unexpected member"),  # the path travels in a pax record
    ],
)
def test_unsafe_paths_are_refused(member: str, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        _read(_tar(tarfile.TarInfo(member)))


def test_links_are_refused() -> None:
    link = tarfile.TarInfo("model.tflite")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(BundleError, match="not a regular file"):
        _read(_tar(link))


def test_size_limit_is_enforced() -> None:
    data, _ = signed_bundle()
    with pytest.raises(BundleError, match="byte limit"):
        read_bundle(io.BytesIO(data), max_bytes=10)


def test_not_a_tar_and_truncated_archives_are_named() -> None:
    with pytest.raises(BundleError, match="not a bundle"):
        _read(b"this is not an archive at all" * 40)
    data, trusted = signed_bundle()
    # Cut inside the second member's data: tar pads to 10 KiB, so halving would only trim padding.
    with pytest.raises(BundleError, match=r"is truncated|not a bundle|never signed"):
        _read(data[:1100]).verify(trusted)


def test_an_unsigned_bundle_is_named() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        manifest = manifest_bytes(FILES)
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        archive.addfile(info, io.BytesIO(manifest))
    with pytest.raises(BundleError, match="never signed"):
        _read(buffer.getvalue())


def test_an_unlisted_extra_file_is_refused() -> None:
    key = generate_private_key()
    manifest = manifest_bytes(FILES)
    data = bundle_bytes(manifest, sign(key, manifest), dict(FILES, **{"labels.txt": b"a\nb\n"}))
    with pytest.raises(BundleError, match=r"does not list: labels\.txt"):
        _read(data).verify(TrustedKeys([key.public_key()]))
