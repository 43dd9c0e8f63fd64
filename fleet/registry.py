"""The model registry: verify uploaded bundles, store them in the artifacts directory, record them."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from fleet.errors import ConflictError, InvalidBundleError, NotFoundError, StorageError
from fleet.storage import repository
from fleet.uploads import Upload
from fleet.views import ModelInfo
from protocol.bundle import BUNDLE_SUFFIX
from protocol.bundle_stream import bundle_file
from protocol.errors import BundleError
from protocol.signing import TrustedKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadResult:
    model: ModelInfo
    created: bool
    """False when the same bundle was already stored (an idempotent re-upload)."""


class Registry:
    """Bundles live at ``ARTIFACTS/NAME/VERSION.bundle``; their metadata in the ``models`` table."""

    def __init__(self, engine: Engine, artifacts: Path, trusted: TrustedKeys) -> None:
        """Nothing is touched on disk here; ``fleet serve`` calls ``clean_incoming`` at start."""
        self.engine = engine
        self.artifacts = artifacts
        self.trusted = trusted
        # One upload at a time per process: check-then-write of NAME/VERSION must not interleave.
        self._lock = threading.Lock()

    def upload(self, upload: Upload) -> UploadResult:
        """Verify an upload from its temporary file and move it into place; InvalidBundleError /
        ConflictError otherwise (the caller removes the temporary file in every case)."""
        try:
            # Headers, then the signature, then each member hashed in chunks: bounded memory.
            with bundle_file(upload.path, self.trusted, max_bytes=max(upload.size, 1)) as bundle:
                manifest = bundle.manifest
        except BundleError as exc:
            raise InvalidBundleError(f"bundle rejected: {exc}") from exc
        digest = upload.sha256
        relative = Path(manifest.name) / f"{manifest.version}{BUNDLE_SUFFIX}"
        with self._lock:
            with self.engine.begin() as conn:
                existing = repository.get_model(conn, manifest.name, manifest.version)
            if existing is not None:
                if existing.sha256 == digest:
                    return UploadResult(existing, created=False)
                raise ConflictError(
                    f"model {manifest.name} {manifest.version} is already stored with sha256 "
                    f"{existing.sha256}; this bundle's sha256 is {digest}. Publish a new version instead"
                )
            target = self.artifacts / relative
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(upload.path, target)  # fsynced when received; same filesystem
            except OSError as exc:
                raise StorageError(f"cannot store the bundle at {target}: {exc.strerror or exc}") from exc
            with self.engine.begin() as conn:
                info = repository.insert_model(
                    conn,
                    repository.NewModel(
                        name=manifest.name,
                        version=manifest.version,
                        sha256=digest,
                        size=upload.size,
                        task=manifest.task.value,
                        quantization=manifest.quantization.value,
                        key_id=bundle.signature.key_id,
                        created_at=manifest.created_at,
                        path=relative.as_posix(),
                        manifest=manifest.model_dump(mode="json"),
                    ),
                )
        log.info("stored model %s %s (%d bytes, sha256 %s)", info.name, info.version, info.size, info.sha256)
        return UploadResult(info, created=True)

    def bundle_path(self, name: str, version: str) -> tuple[ModelInfo, Path]:
        with self.engine.begin() as conn:
            found = repository.get_model_path(conn, name, version)
        if found is None:
            raise NotFoundError(f"no model {name} {version} in the registry")
        info, relative = found
        path = self.artifacts / relative
        if not path.is_file():
            raise StorageError(f"the bundle of {name} {version} is missing from {self.artifacts}")
        return info, path

    def delete(self, name: str, version: str) -> None:
        """Remove a model and its bundle; ConflictError while a desired state or a device uses it."""
        with self._lock:
            with self.engine.begin() as conn:
                in_use = repository.model_in_use(conn, name, version)
                if in_use:
                    shown = ", ".join(in_use[:5]) + (
                        f" and {len(in_use) - 5} more" if len(in_use) > 5 else ""
                    )
                    raise ConflictError(
                        f"model {name} {version} is deployed ({shown}); deploy another version first"
                    )
                relative = repository.delete_model(conn, name, version)
            if relative is None:
                raise NotFoundError(f"no model {name} {version} in the registry")
            (self.artifacts / relative).unlink(missing_ok=True)
        log.info("deleted model %s %s", name, version)
