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
from protocol.signing import TrustedKeys, generate_private_key, sign
from tests.protocol.test_bundle import FILES, _manifest_bytes, _signed_bundle

GIB = 1 << 30
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


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _pack(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, mode="w:", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data))
    return path


def _signed_members(key_files: dict[str, bytes] = FILES) -> tuple[bytes, bytes, TrustedKeys]:
    key = generate_private_key()
    manifest = _manifest_bytes(key_files)
    return manifest, sign(key, manifest).model_dump_json().encode(), TrustedKeys([key.public_key()])


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


def _sparse_bundle(path: Path, kind: str) -> Path:
    manifest, signature, _ = _signed_members()
    _pack(path, [_member("manifest.json", manifest), _member("manifest.sig", signature)])
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
    path = _sparse_bundle(tmp_path / "sparse.bundle", kind)
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


def _huge_model_bundle(path: Path, key_trusted: bool, claimed: int = GIB) -> tuple[Path, TrustedKeys]:
    """A bundle whose model.tflite claims ``claimed`` bytes (a file with a hole: nothing on disk)."""
    files = {"model.tflite": b"\0" * 16, "samples.npz": FILES["samples.npz"]}
    manifest, signature, trusted = _signed_members(files)
    _pack(path, [_member("manifest.json", manifest), _member("manifest.sig", signature)])
    head = path.read_bytes().rstrip(b"\0")
    head += b"\0" * (-len(head) % 512)
    model = tarfile.TarInfo("model.tflite")
    model.size = claimed
    samples, data = _member("samples.npz", files["samples.npz"])
    with open(path, "wb") as handle:
        handle.write(head + model.tobuf(format=tarfile.PAX_FORMAT))
        handle.seek(claimed, io.SEEK_CUR)
        handle.write(samples.tobuf(format=tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512 + 1024))
    return path, trusted if key_trusted else TrustedKeys([generate_private_key().public_key()])


def test_an_untrusted_signature_is_refused_before_any_member_is_read(tmp_path: Path) -> None:
    path, untrusted = _huge_model_bundle(tmp_path / "huge.bundle", key_trusted=False)
    with CountingFile(path) as handle, pytest.raises(SignatureError, match="not trusted here"):
        verify_bundle(handle, untrusted, "huge.bundle", max_bytes=2 * GIB)
    assert handle.read_bytes < 8 * 1024


def test_a_member_larger_than_its_manifest_entry_is_refused_before_hashing(tmp_path: Path) -> None:
    path, trusted = _huge_model_bundle(tmp_path / "huge.bundle", key_trusted=True)
    with (
        CountingFile(path) as handle,
        pytest.raises(BundleError, match=r"model\.tflite is 1073741824 bytes, larger than the 16"),
    ):
        verify_bundle(handle, trusted, "huge.bundle", max_bytes=2 * GIB)
    assert handle.read_bytes < 8 * 1024


def test_members_in_another_order_verify(tmp_path: Path) -> None:
    manifest, signature, trusted = _signed_members()
    members = [_member(name, data) for name, data in sorted(FILES.items(), reverse=True)]
    path = _pack(
        tmp_path / "reordered.bundle",
        [*members, _member("manifest.sig", signature), _member("manifest.json", manifest)],
    )
    with bundle_file(path, trusted) as bundle:
        assert bundle.manifest.name == "digits"
        assert bundle.read_member("model.tflite") == FILES["model.tflite"]
    assert read_bundle(path).members == FILES


def test_a_streamed_verify_names_a_flipped_byte_and_a_missing_member(tmp_path: Path) -> None:
    data, trusted = _signed_bundle()
    at = data.index(FILES["samples.npz"])
    flipped = tmp_path / "flipped.bundle"
    flipped.write_bytes(data[:at] + b"X" + data[at + 1 :])
    with pytest.raises(BundleError, match=r"samples\.npz does not match its sha256"):
        _open(flipped, trusted)
    manifest, signature, trusted = _signed_members()
    short = _pack(
        tmp_path / "short.bundle",
        [_member("manifest.json", manifest), _member("manifest.sig", signature)],
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
    path = _pack(tmp_path / "odd.bundle", [(info, b"")])
    with pytest.raises(BundleError, match=message):
        _open(path)


def test_a_duplicate_member_is_refused(tmp_path: Path) -> None:
    path = _pack(tmp_path / "twice.bundle", [_member("model.tflite", b"a"), _member("model.tflite", b"b")])
    with pytest.raises(BundleError, match=r"holds 'model\.tflite' twice"):
        _open(path)
