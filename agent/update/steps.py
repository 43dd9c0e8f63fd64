"""What each update step does. Each raises its own ``UpdateError`` subclass, in words."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import requests

from agent.errors import DownloadError, SmokeTestError, StageError, StoreError, VerifyError
from agent.runtime import ModelLoadError, RuntimeChoice, RuntimeError_, load_model
from agent.serving import ActiveModel, check_compatible
from agent.store import ModelStore
from protocol.bundle import MODEL, SAMPLES, Bundle, read_bundle
from protocol.errors import BundleError, MessageError, SignatureError
from protocol.manifest import Manifest
from protocol.messages import DesiredModel, DesiredState, parse_message
from protocol.signing import TrustedKeys

CHUNK = 64 * 1024


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


def download(
    session: requests.Session, fleet_url: str, target: DesiredModel, dest: Path, timeout_s: float
) -> Path:
    """Stream the bundle to ``dest`` (via ``dest.part``); its sha256 must be ``target.sha256``."""
    if dest.exists() and _sha256_file(dest) == target.sha256:
        return dest
    url = urljoin(fleet_url.rstrip("/") + "/", target.url)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        with session.get(url, stream=True, timeout=timeout_s) as response:
            response.raise_for_status()
            with open(part, "wb") as handle:
                for chunk in response.iter_content(CHUNK):
                    size += len(chunk)
                    if size > target.size:
                        raise DownloadError(
                            f"the bundle at {url} is larger than the {target.size} bytes "
                            "the desired state says"
                        )
                    digest.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
    except requests.RequestException as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot download the bundle from {url}: {exc}") from exc
    except (DownloadError, OSError):
        part.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != target.sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch: the downloaded bundle ({size} bytes) has sha256 {digest.hexdigest()}, "
            f"the desired state says {target.sha256}; the download is corrupt or the fleet's record is wrong"
        )
    part.replace(dest)
    return dest


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, trusted: TrustedKeys, runtime: RuntimeChoice, threads: int) -> tuple[Bundle, Manifest]:
    """Signature, manifest, file hashes, and the runtime can load the model as the manifest says."""
    try:
        bundle = read_bundle(path)
    except BundleError as exc:
        raise VerifyError(f"bundle check failed: {exc}") from exc
    try:
        manifest = bundle.verify(trusted)
    except SignatureError as exc:
        raise VerifyError(f"signature check failed: {exc}") from exc
    except BundleError as exc:
        raise VerifyError(f"bundle check failed: {exc}") from exc
    try:
        loaded = load_model(bundle.members[MODEL], runtime=runtime, threads=threads)
    except (ModelLoadError, RuntimeError_) as exc:
        raise VerifyError(f"runtime check failed: {exc}") from exc
    check_compatible(manifest, loaded)
    return bundle, manifest


def stage(store: ModelStore, sha256: str, bundle: Bundle) -> None:
    try:
        store.stage(
            sha256, bundle.manifest_bytes, bundle.signature.model_dump_json().encode(), bundle.members
        )
    except OSError as exc:
        raise StageError(f"cannot write the model into {store.model_dir(sha256)}: {exc}") from exc


def smoke(store: ModelStore, sha256: str, runtime: RuntimeChoice, threads: int) -> ActiveModel:
    """Load the staged model in a fresh interpreter and reproduce the converter's outputs."""
    try:
        stored = store.read(sha256)
        model = ActiveModel.load(stored, runtime=runtime, threads=threads)
        with np.load(io.BytesIO((stored.path / SAMPLES).read_bytes())) as samples:
            x, y = samples["x"], samples["y"]
    except (StoreError, ModelLoadError, RuntimeError_, VerifyError, OSError, KeyError, ValueError) as exc:
        raise SmokeTestError(f"smoke test could not run: {exc}") from exc
    if len(x) == 0:
        raise SmokeTestError("smoke test failed: samples.npz holds no samples")
    outputs = model.predict(np.asarray(x, dtype=np.float32)).outputs
    expected = np.asarray(y, dtype=np.float32)
    if outputs.shape != expected.shape:
        raise SmokeTestError(
            f"smoke test failed: the model's outputs have shape {list(outputs.shape)}, "
            f"the recorded outputs {list(expected.shape)}"
        )
    diff = np.abs(outputs - expected)
    atol = stored.manifest.smoke.atol
    worst = float(diff.max())
    if not np.isfinite(worst) or worst > atol:
        sample = int(np.unravel_index(int(np.argmax(diff)), diff.shape)[0])
        raise SmokeTestError(
            f"smoke test failed: outputs differ from the recorded ones by up to {worst:.4g} "
            f"(allowed {atol:g}), worst at sample {sample} of {len(x)}"
        )
    return model
