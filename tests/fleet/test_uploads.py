"""Bundle uploads stream to a temporary file: verified from disk, exact about truncation, and
leaving nothing behind (a killed fleet's leftovers are removed at the next start)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import requests

from edgefleet.mosquitto import MosquittoBroker
from fleet.server import FleetServer
from fleet.uploads import STALE_UPLOAD_S, Upload, incoming_dir, receive
from protocol.manifest import FileEntry
from protocol.signing import load_private_key, sign
from tests.fleet.bundles import build_bundle, make_manifest, model_files
from tests.support.fleet import InProcessFleet, fleet_config
from tests.support.processes import FleetProcess

OCTET = {"Content-Type": "application/octet-stream"}


def _leftovers(api: InProcessFleet) -> list[Path]:
    folder = incoming_dir(api.artifacts)
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_a_truncated_bundle_is_named_as_such(api: InProcessFleet, signing_keys: tuple[Path, Path]) -> None:
    data = build_bundle(signing_keys[0], "digits", "1.0.0")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        model = archive.getmember("model.tflite")
    cut = data[: model.offset_data + model.size // 2]  # half of the model's bytes arrived
    response = api.client.post("/api/v1/models", content=cut, headers=OCTET)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "truncated" in detail and "model.tflite" in detail and "limit" not in detail
    assert _leftovers(api) == []
    assert api.client.get("/api/v1/models").json() == []


def test_uploads_leave_no_temporary_file(api: InProcessFleet, signing_keys: tuple[Path, Path]) -> None:
    data = build_bundle(signing_keys[0], "digits", "1.0.0")
    assert api.client.post("/api/v1/models", content=data, headers=OCTET).status_code == 201
    assert api.client.post("/api/v1/models", content=data, headers=OCTET).status_code == 200
    assert api.client.post("/api/v1/models", content=b"junk" * 100, headers=OCTET).status_code == 400
    too_big = b"\0" * (api.context.max_bundle_bytes + 1)
    assert api.client.post("/api/v1/models", content=too_big, headers=OCTET).status_code == 413
    assert _leftovers(api) == []
    assert (api.artifacts / "digits" / "1.0.0.bundle").read_bytes() == data


def test_leftovers_of_a_killed_upload_are_removed_at_start(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> None:
    """A worker starting next to others on one artifacts directory removes what a killed worker
    left (untouched for longer than STALE_UPLOAD_S), never an upload another worker is writing."""
    config = fleet_config(tmp_path, broker, signing_keys)
    folder = incoming_dir(config.artifacts)
    folder.mkdir(parents=True)
    left = folder / "0123abcd.part"
    left.write_bytes(b"half a bundle")
    old = time.time() - STALE_UPLOAD_S - 60
    os.utime(left, (old, old))
    in_progress = folder / "4567cdef.part"
    in_progress.write_bytes(b"the first megabyte of another worker's upload")
    keep = config.artifacts / "digits" / "1.0.0.bundle"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"a stored bundle")
    server = FleetServer(config)
    try:
        assert list(folder.iterdir()) == [in_progress]
        assert keep.read_bytes() == b"a stored bundle"
    finally:
        server.engine.dispose()


def test_a_second_worker_starting_does_not_break_an_upload_in_progress(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> None:
    """An upload streaming into the shared .incoming/ (its first chunks written, the rest not yet
    sent) survives another worker starting on the same artifacts directory, and is stored."""
    config = fleet_config(tmp_path, broker, signing_keys)
    data = os.urandom(5000)  # receive() only streams and hashes; verification comes after
    written = threading.Event()
    finish = threading.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield data[:1000]
        written.set()
        await asyncio.to_thread(finish.wait, 30)
        yield data[1000:]

    async def upload() -> Upload:
        return await receive(chunks(), config.artifacts, 1 << 20, str(len(data)))

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(asyncio.run, upload())
        assert written.wait(30)
        second = FleetServer(config)  # the second worker starts while the upload streams
        second.engine.dispose()
        finish.set()
        received = pending.result(30)
    assert received.path.read_bytes() == data
    assert received.sha256 == hashlib.sha256(data).hexdigest()
    received.path.unlink()


MIB = 1 << 20


def write_large_bundle(path: Path, key: Path, model_mib: int) -> None:
    """A signed bundle with ``model_mib`` MiB of model bytes, written to disk in 1 MiB pieces."""
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    for _ in range(model_mib):
        digest.update(block)
    samples = b"PK-not-really-npz"
    files = model_files()
    files["samples.npz"] = samples
    manifest = make_manifest("big", "1.0.0", files)
    entries = dict(manifest.files)
    entries["model.tflite"] = FileEntry(sha256=digest.hexdigest(), size=model_mib * MIB)
    manifest_bytes = manifest.model_copy(update={"files": entries}).model_dump_json().encode()
    signature = sign(load_private_key(key), manifest_bytes).model_dump_json().encode()
    with open(path, "wb") as handle:
        for name, data in (("manifest.json", manifest_bytes), ("manifest.sig", signature)):
            _write_member(handle, name, len(data), [data])
        _write_member(handle, "model.tflite", model_mib * MIB, (block for _ in range(model_mib)))
        _write_member(handle, "samples.npz", len(samples), [samples])
        handle.write(b"\0" * 1024)


def _write_member(handle: BinaryIO, name: str, size: int, pieces: Iterable[bytes]) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    handle.write(info.tobuf(format=tarfile.PAX_FORMAT))
    for piece in pieces:
        handle.write(piece)
    handle.write(b"\0" * (-size % 512))


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), from Linux's /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for process {pid}")


def test_a_large_upload_keeps_the_fleet_process_small(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> None:
    """200 MiB of model bytes through a real ``fleet serve``: streamed to disk and verified there,
    its peak memory grows by a few MiB, not by the bundle's size."""
    small = build_bundle(signing_keys[0], "digits", "1.0.0")
    big = tmp_path / "big.bundle"
    write_large_bundle(big, signing_keys[0], model_mib=200)
    fleet = FleetProcess(tmp_path / "fleet", broker.port, signing_keys[1], mqtt_host=broker.host)
    fleet.start_and_wait(30)
    try:
        url = f"{fleet.url}/api/v1/models"
        # Warm up: the first upload imports what verifying needs; only the large one is measured.
        assert requests.post(url, data=small, headers=OCTET, timeout=30).status_code == 201
        before = peak_rss_kib(fleet.pid)
        with open(big, "rb") as body:
            response = requests.post(url, data=body, headers=OCTET, timeout=60)
        assert response.status_code == 201, response.text
        grown_mib = (peak_rss_kib(fleet.pid) - before) / 1024
    finally:
        fleet.stop()
    assert response.json()["size"] == big.stat().st_size
    assert grown_mib < 32, f"the fleet's peak RSS grew by {grown_mib:.1f} MiB for a 200 MiB upload"
