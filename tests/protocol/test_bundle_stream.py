"""Verifying a bundle from disk: headers are judged before data, the signature before any hash,
and memory stays bounded whatever sizes the archive claims."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from protocol.bundle import read_bundle
from protocol.bundle_stream import bundle_file, verify_bundle
from protocol.errors import BundleError, SignatureError
from protocol.signing import TrustedKeys
from tests.support.bundle_files import (
    FILES,
    GIB,
    huge_model_bundle,
    member,
    pack,
    signed_bundle,
    signed_members,
    sparse_bundle,
)

ROOT = Path(__file__).resolve().parents[2]


class CountingFile(io.FileIO):
    """A real file that counts the bytes read through it (the verifier's only way in)."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def _open(path: Path, trusted: TrustedKeys | None = None) -> str:
    with bundle_file(path, trusted) as bundle:
        return bundle.manifest.name


_MEASURE = """
import json, resource, sys
from pathlib import Path
from protocol.bundle import read_bundle
from protocol.bundle_stream import bundle_file
from protocol.errors import BundleError
from protocol.signing import TrustedKeys, generate_private_key
trusted = TrustedKeys([generate_private_key().public_key()])
path = Path(sys.argv[1])
def opened(path, trusted):
    with bundle_file(path, trusted) as bundle:
        return bundle
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
errors = []
for check in (lambda: read_bundle(path), lambda: opened(path, trusted)):
    try:
        check()
    except BundleError as exc:
        errors.append(str(exc))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grown_kib": grown, "errors": errors}))
"""


@pytest.mark.parametrize("kind", ["gnu", "pax"])
def test_a_sparse_member_is_refused_by_its_header_without_allocating(tmp_path: Path, kind: str) -> None:
    path = sparse_bundle(tmp_path / "sparse.bundle", kind)
    assert path.stat().st_size < 16 * 1024
    with tarfile.open(path) as archive:  # what tar makes of it: a 1 GiB file
        assert [m.size for m in archive if m.issparse()] == [GIB]
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    report = json.loads(result.stdout)
    assert len(report["errors"]) == 2, report
    for message in report["errors"]:
        assert "'model.tflite' is a GNU sparse file, not a regular file" in message
    assert report["grown_kib"] < 4 * 1024, report


def test_an_untrusted_signature_is_refused_before_any_member_is_read(tmp_path: Path) -> None:
    path, untrusted = huge_model_bundle(tmp_path / "huge.bundle", key_trusted=False)
    with CountingFile(path) as handle, pytest.raises(SignatureError, match="not trusted here"):
        verify_bundle(handle, untrusted, "huge.bundle", max_bytes=2 * GIB)
    assert handle.read_bytes < 8 * 1024


def test_a_member_larger_than_its_manifest_entry_is_refused_before_hashing(tmp_path: Path) -> None:
    path, trusted = huge_model_bundle(tmp_path / "huge.bundle", key_trusted=True)
    with (
        CountingFile(path) as handle,
        pytest.raises(BundleError, match=r"model\.tflite is 1073741824 bytes, larger than the 16"),
    ):
        verify_bundle(handle, trusted, "huge.bundle", max_bytes=2 * GIB)
    assert handle.read_bytes < 8 * 1024


def test_members_in_another_order_verify(tmp_path: Path) -> None:
    manifest, signature, trusted = signed_members()
    members = [member(name, data) for name, data in sorted(FILES.items(), reverse=True)]
    path = pack(
        tmp_path / "reordered.bundle",
        [*members, member("manifest.sig", signature), member("manifest.json", manifest)],
    )
    with bundle_file(path, trusted) as bundle:
        assert bundle.manifest.name == "digits"
        assert bundle.read_member("model.tflite") == FILES["model.tflite"]
    assert read_bundle(path).members == FILES


def test_a_streamed_verify_names_a_flipped_byte_and_a_missing_member(tmp_path: Path) -> None:
    data, trusted = signed_bundle()
    at = data.index(FILES["samples.npz"])
    flipped = tmp_path / "flipped.bundle"
    flipped.write_bytes(data[:at] + b"X" + data[at + 1 :])
    with pytest.raises(BundleError, match=r"samples\.npz does not match its sha256"):
        _open(flipped, trusted)
    manifest, signature, trusted = signed_members()
    short = pack(
        tmp_path / "short.bundle",
        [member("manifest.json", manifest), member("manifest.sig", signature)],
    )
    with pytest.raises(BundleError, match=r"lacks files its manifest lists: model\.tflite, samples\.npz"):
        _open(short, trusted)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (tarfile.LNKTYPE, "is a hard link, not a regular file"),
        (tarfile.CHRTYPE, "is a character device, not a regular file"),
        (tarfile.DIRTYPE, "is a directory, not a regular file"),
    ],
)
def test_non_regular_members_are_named_by_kind(tmp_path: Path, kind: bytes, message: str) -> None:
    info = tarfile.TarInfo("model.tflite")
    info.type = kind
    path = pack(tmp_path / "odd.bundle", [(info, b"")])
    with pytest.raises(BundleError, match=message):
        _open(path)


def test_a_duplicate_member_is_refused(tmp_path: Path) -> None:
    path = pack(tmp_path / "twice.bundle", [member("model.tflite", b"a"), member("model.tflite", b"b")])
    with pytest.raises(BundleError, match=r"holds 'model\.tflite' twice"):
        _open(path)
