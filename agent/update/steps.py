"""What each update step does. Each raises its own ``UpdateError`` subclass, in words.

This module imports requests and (through protocol.bundle) cryptography: the agent runs it in a
worker process (``agent.update.worker``) so that neither stays resident in the serving process.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urljoin

import requests

from agent.errors import DownloadError, StageError, StoreError, VerifyError
from agent.serving import check_compatible
from agent.store import ModelStore, fsync_dir
from protocol.bundle import MANIFEST, MODEL, SIGNATURE, write_atomically
from protocol.bundle_stream import BundleFile, bundle_file
from protocol.errors import BundleError, MessageError, SignatureError
from protocol.manifest import Manifest
from protocol.messages import DesiredModel, DesiredState, parse_message
from protocol.signing import TrustedKeys, parse_signature
from runtime import ModelLoadError, RuntimeChoice, RuntimeError_, load_model

CHUNK = 64 * 1024
DOWNLOAD_CHUNK = 16 * 1024

log = logging.getLogger(__name__)


def fetch_desired(
    session: requests.Session, fleet_url: str, device_id: str, timeout_s: float
) -> DesiredState:
    url = f"{fleet_url.rstrip('/')}/api/v1/devices/{device_id}/desired"
    try:
        response = session.get(url, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise DownloadError(f"cannot read the desired state from {url}: {exc}") from exc
    try:
        return parse_message(DesiredState, response.content)
    except MessageError as exc:
        raise DownloadError(f"{url} answered with something that is not a desired state: {exc}") from exc


class _RetryableError(DownloadError):
    """A failure a later attempt may not meet (network, 5xx); the partial file is kept."""


def _open_part(path: Path, mode: str) -> IO[bytes]:
    """The one place bundle bytes are written (tests replace it to simulate a full disk)."""
    return open(path, mode)


def download(
    session: requests.Session, fleet_url: str, target: DesiredModel, dest: Path, timeout_s: float
) -> Path:
    """Fetch the bundle to ``dest`` (via ``dest.part``, resumed with ``Range`` when one exists);
    the whole file's sha256 must be ``target.sha256``."""
    if dest.exists() and _sha256_file(dest) == target.sha256:
        return dest
    url = urljoin(fleet_url.rstrip("/") + "/", target.url)
    part = dest.with_name(dest.name + ".part")
    try:
        size = _fetch_into(session, url, target, part, timeout_s)
    except OSError as exc:
        part.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DownloadError(
                f"no space left in the state directory {dest.parent.parent} for the {target.size}-byte "
                "bundle; free some space (the current model keeps serving)"
            ) from exc
        raise DownloadError(f"cannot write the bundle to {part}: {exc}") from exc
    except _RetryableError:
        raise  # the part file is kept for the next attempt, unless the error removed it
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    digest = _sha256_file(part)
    if digest != target.sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch: the downloaded bundle ({size} bytes) has sha256 {digest}, "
            f"the desired state says {target.sha256}; the download is corrupt or the fleet's record is wrong"
        )
    part.replace(dest)
    return dest


def _fetch_into(
    session: requests.Session, url: str, target: DesiredModel, part: Path, timeout_s: float
) -> int:
    """Append the rest of the bundle to ``part`` (or write it afresh); return its size. Network
    errors become ``_RetryableError``, refusals ``DownloadError``; disk errors stay ``OSError``."""
    have = part.stat().st_size if part.exists() else 0
    if have >= target.size:
        part.unlink(missing_ok=True)
        have = 0
    headers = {"Range": f"bytes={have}-", "If-Range": f'"{target.sha256}"'} if have else {}
    size = 0
    try:
        with session.get(url, stream=True, timeout=timeout_s, headers=headers) as response:
            resumed = _accept_response(response, url, have, part)
            size = have if resumed else 0
            with _open_part(part, "ab" if resumed else "wb") as handle:
                # Small reads: when the connection drops, only the read in progress is lost.
                for chunk in response.iter_content(DOWNLOAD_CHUNK):
                    size += len(chunk)
                    if size > target.size:
                        raise DownloadError(
                            f"the bundle at {url} is larger than the {target.size} bytes "
                            "the desired state says"
                        )
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
    except requests.HTTPError as exc:
        raise DownloadError(f"cannot download the bundle from {url}: {exc}") from exc
    except requests.RequestException as exc:
        raise _RetryableError(
            f"download of {url} interrupted after {size} bytes ({exc}); it resumes"
        ) from exc
    return size


def _accept_response(response: requests.Response, url: str, have: int, part: Path) -> bool:
    """Whether the answer resumes ``part`` (else it starts over); raise when it cannot be used."""
    if response.status_code == 416:
        part.unlink(missing_ok=True)
        raise _RetryableError(f"the fleet refused to resume {url} (416); starting again")
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise _RetryableError(f"cannot download the bundle from {url}: HTTP {response.status_code}")
    response.raise_for_status()
    resumed = have > 0 and response.status_code == 206
    if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
        part.unlink(missing_ok=True)
        raise _RetryableError(f"{url} answered the resume with the wrong range; starting again")
    return resumed


def download_with_retries(  # noqa: PLR0913 - the retry policy's numbers beside the transfer's inputs, keyword-only
    session: requests.Session,
    fleet_url: str,
    target: DesiredModel,
    dest: Path,
    timeout_s: float,
    *,
    attempts: int,
    base_delay_s: float,
    wait: Callable[[float], None],
    jitter: Callable[[], float] = random.random,
) -> Path:
    """``download``, retried on network errors and 5xx with exponential backoff and jitter
    (delay ``min(60, base * 2**k)``, scaled by a random factor in [0.5, 1)); each retry resumes."""
    for attempt in range(attempts):
        try:
            return download(session, fleet_url, target, dest, timeout_s)
        except _RetryableError as exc:
            if attempt + 1 >= attempts:
                raise DownloadError(f"{exc}; gave up after {attempts} attempts") from exc
            delay = min(60.0, base_delay_s * 2**attempt) * (0.5 + jitter() / 2)
            log.warning("%s; retrying in %.1f s (attempt %d of %d)", exc, delay, attempt + 2, attempts)
            wait(delay)
    raise DownloadError("download was not attempted")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, trusted: TrustedKeys, runtime: RuntimeChoice, threads: int) -> Manifest:
    """Signature, manifest, file hashes, and the runtime can load the model as the manifest says.

    Bounded memory until the signature is checked: headers, then manifest and signature, then each
    member hashed in chunks; only the model the signed manifest describes is read whole, to load it.
    """
    try:
        with bundle_file(path, trusted) as bundle:
            model = bundle.read_member(MODEL)
    except SignatureError as exc:
        raise VerifyError(f"signature check failed: {exc}") from exc
    except BundleError as exc:
        raise VerifyError(f"bundle check failed: {exc}") from exc
    try:
        loaded = load_model(model, runtime=runtime, threads=threads)
    except (ModelLoadError, RuntimeError_) as exc:
        raise VerifyError(f"runtime check failed: {exc}") from exc
    check_compatible(bundle.manifest, loaded)
    return bundle.manifest


def verify_stored(
    store: ModelStore, sha256: str, trusted: TrustedKeys, runtime: RuntimeChoice, threads: int
) -> Manifest:
    """``verify`` for a model already in the store (a rollback to a kept model): the stored
    manifest's signature, every file against the manifest, and the runtime loads the model."""
    folder = store.model_dir(sha256)
    try:
        manifest_bytes = (folder / MANIFEST).read_bytes()
        signature = parse_signature((folder / SIGNATURE).read_bytes())
        trusted.verify(manifest_bytes, signature)
        stored = store.read(sha256)
    except SignatureError as exc:
        raise VerifyError(f"signature check of stored model {sha256[:12]} failed: {exc}") from exc
    except (StoreError, BundleError, OSError) as exc:
        raise VerifyError(f"stored model {sha256[:12]} cannot be verified: {exc}") from exc
    try:
        loaded = load_model(stored.model, runtime=runtime, threads=threads)
    except (ModelLoadError, RuntimeError_) as exc:
        raise VerifyError(f"runtime check failed: {exc}") from exc
    check_compatible(stored.manifest, loaded)
    return stored.manifest


def stage(store: ModelStore, path: Path, sha256: str) -> None:
    """Extract the bundle ``verify`` accepted into the store, without verifying its signature again.

    The file must still be the one verified: its sha256 is the target's (the download checked it,
    and it is checked again here), and each member is copied in chunks, its sha256 re-checked
    against the manifest while copying, so nothing else is staged.
    """
    try:
        digest = _sha256_file(path)
    except OSError as exc:
        raise StageError(f"cannot read the verified bundle {path}: {exc}") from exc
    if digest != sha256:
        raise StageError(
            f"the bundle {path} is not the one that was verified (sha256 {digest}, expected {sha256}); "
            "something else wrote into the state directory"
        )
    folder = store.model_dir(sha256)
    try:
        with bundle_file(path) as bundle:
            folder.mkdir(parents=True, exist_ok=True)
            for name in sorted(bundle.spans):
                _copy_member(bundle, name, folder / name)
            write_atomically(folder / SIGNATURE, bundle.signature.model_dump_json().encode())
            write_atomically(folder / MANIFEST, bundle.manifest_bytes)  # last: marks the slot complete
        fsync_dir(folder)
        fsync_dir(store.models_dir)
    except BundleError as exc:
        raise StageError(f"cannot read the verified bundle {path}: {exc}") from exc
    except OSError as exc:
        raise StageError(f"cannot write the model into {folder}: {exc}") from exc


def _copy_member(bundle: BundleFile, name: str, dest: Path) -> None:
    """Copy one member to ``dest`` via a temporary name, fsynced; nothing is left if it mismatches."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            bundle.copy_member(name, handle.write)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
