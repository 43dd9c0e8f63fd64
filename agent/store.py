"""The state directory: verified models by bundle digest, and the pointer to the active one.

Layout::

    state_dir/
      models/<bundle-sha256>/   manifest.json, manifest.sig, model.tflite, samples.npz, labels.txt
      downloads/                bundles being fetched (<sha256>.bundle.part, then <sha256>.bundle)
      active.json               {"active": sha|null, "previous": sha|null, "older": [sha, ...]}
      update.json               the update state machine's record (agent.update.record)
      versions.json             per model name, the newest version committed here (agent.update.downgrade)

Every file is written to a temporary name, fsynced and renamed, so a power cut leaves either
the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.errors import StoreError
from protocol import bundle
from protocol.bundle import LABELS, MANIFEST, MODEL, SIGNATURE, sha256_hex, write_atomically
from protocol.errors import BundleError
from protocol.manifest import Manifest
from protocol.schema import ModelRef, SemVer


def parse_manifest(data: bytes) -> Manifest:
    try:
        return bundle.parse_manifest(data)
    except BundleError as exc:
        raise StoreError(str(exc)) from exc


_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ActivePointer(BaseModel):
    """``active.json``: the bundle digest being served, the one before it, and older ones kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    active: str | None = None
    previous: str | None = None
    older: tuple[str, ...] = ()
    """Models served before ``previous``, newest first, kept for a rollback ([update] keep_previous)."""

    def history(self) -> list[str]:
        """The models served before the active one, newest first, each once."""
        seen: list[str] = []
        for sha in (self.previous, *self.older):
            if sha is not None and sha != self.active and sha not in seen:
                seen.append(sha)
        return seen

    def models(self) -> set[str]:
        """Every model this pointer names."""
        return {sha for sha in (self.active, *self.history()) if sha is not None}

    def switched_to(self, sha256: str) -> ActivePointer:
        """The pointer after activating ``sha256``: the active model becomes the previous one."""
        chain = [sha for sha in (self.active, *self.history()) if sha is not None and sha != sha256]
        return ActivePointer(active=sha256, previous=chain[0] if chain else None, older=tuple(chain[1:]))

    def keeping(self, previous: int) -> ActivePointer:
        """The pointer with at most ``previous`` models before the active one."""
        kept = self.history()[:previous]
        return ActivePointer(active=self.active, previous=kept[0] if kept else None, older=tuple(kept[1:]))


class VersionMark(BaseModel):
    """The high-water mark of one model name on this device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    highest: SemVer
    """The newest version of this model the device has committed (never lowered)."""
    ran_older: bool = False
    """The device has run an older version since: its one step back without a grant is spent."""


class VersionMarks:
    """``versions.json``: ``{model name: VersionMark}``, written atomically like every state file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, VersionMark]:
        try:
            raw = json.loads(self.path.read_bytes())
            if not isinstance(raw, dict):
                raise TypeError(f"a JSON object was expected, not {type(raw).__name__}")
            return {str(name): VersionMark.model_validate(mark) for name, mark in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:  # ValidationError is a ValueError
            raise StoreError(f"{self.path} is unreadable or corrupt: {exc}") from exc

    def save(self, marks: dict[str, VersionMark]) -> None:
        write_json(self.path, {name: mark.model_dump() for name, mark in sorted(marks.items())})


@dataclass(frozen=True)
class StoredModel:
    """A model read back from the store, its files checked against its manifest."""

    sha256: str
    path: Path
    manifest: Manifest
    model: bytes
    labels: list[str] | None

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.manifest.name, version=self.manifest.version, sha256=self.sha256)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: Any) -> None:
    """Atomically replace ``path`` with ``value`` as JSON, and fsync the directory entry."""
    write_atomically(path, json.dumps(value, indent=2, sort_keys=True).encode())
    fsync_dir(path.parent)


class ModelStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.models_dir = state_dir / "models"
        self.downloads_dir = state_dir / "downloads"
        self.pointer_path = state_dir / "active.json"
        self.versions = VersionMarks(state_dir / "versions.json")

    def open(self) -> ModelStore:
        """Create the directories; fail in words when the state directory is not writable."""
        try:
            for folder in (self.root, self.models_dir, self.downloads_dir):
                folder.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(
                f"state directory {self.root} is not usable ({exc.strerror or exc}); "
                "create it and make it writable for the agent's user"
            ) from exc
        return self

    # -- the active pointer ------------------------------------------------------------------
    def read_pointer(self) -> ActivePointer:
        try:
            return ActivePointer.model_validate_json(self.pointer_path.read_bytes())
        except FileNotFoundError:
            return ActivePointer()
        except (OSError, ValidationError) as exc:
            raise StoreError(f"{self.pointer_path} is unreadable or corrupt: {exc}") from exc

    def write_pointer(self, pointer: ActivePointer) -> None:
        write_json(self.pointer_path, pointer.model_dump())

    # -- model slots -------------------------------------------------------------------------
    def model_dir(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise StoreError(f"{sha256!r} is not a bundle sha256")
        return self.models_dir / sha256

    def has(self, sha256: str) -> bool:
        return (self.model_dir(sha256) / MANIFEST).is_file()

    def stage(
        self, sha256: str, manifest_bytes: bytes, signature_bytes: bytes, members: dict[str, bytes]
    ) -> Path:
        """Write a verified bundle's files into ``models/<sha256>/`` (manifest last)."""
        folder = self.model_dir(sha256)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in sorted(members.items()):
            write_atomically(folder / name, data)
        write_atomically(folder / SIGNATURE, signature_bytes)
        write_atomically(folder / MANIFEST, manifest_bytes)
        fsync_dir(folder)
        fsync_dir(self.models_dir)
        return folder

    def read(self, sha256: str) -> StoredModel:
        """Read a stored model and check every file against its manifest's sha256."""
        folder = self.model_dir(sha256)
        try:
            manifest = parse_manifest((folder / MANIFEST).read_bytes())
            files = {name: (folder / name).read_bytes() for name in manifest.files}
        except FileNotFoundError as exc:
            raise StoreError(f"stored model {sha256[:12]} is incomplete: {exc.filename} is missing") from exc
        except (OSError, StoreError) as exc:
            raise StoreError(f"stored model {sha256[:12]} is unreadable: {exc}") from exc
        for name, entry in manifest.files.items():
            if len(files[name]) != entry.size or sha256_hex(files[name]) != entry.sha256:
                raise StoreError(
                    f"stored model {sha256[:12]}: {name} does not match its manifest (disk damage?)"
                )
        labels = None
        if LABELS in files:
            labels = [line for line in files[LABELS].decode("utf-8").splitlines() if line.strip()]
        if manifest.labels is not None:
            labels = list(manifest.labels)
        return StoredModel(sha256=sha256, path=folder, manifest=manifest, model=files[MODEL], labels=labels)

    def remove(self, sha256: str) -> None:
        shutil.rmtree(self.model_dir(sha256), ignore_errors=True)

    def stored(self) -> list[str]:
        return sorted(p.name for p in self.models_dir.iterdir() if p.is_dir() and _SHA_RE.match(p.name))

    def prune(self, keep: set[str]) -> list[str]:
        """Remove every stored model not in ``keep``; return the digests removed."""
        removed = [sha for sha in self.stored() if sha not in keep]
        for sha in removed:
            self.remove(sha)
        return removed

    # -- downloads ---------------------------------------------------------------------------
    def download_path(self, sha256: str) -> Path:
        return self.downloads_dir / f"{self.model_dir(sha256).name}.bundle"

    def clear_downloads(self, keep: str | None = None) -> None:
        for path in self.downloads_dir.iterdir():
            if keep is None or not path.name.startswith(keep):
                path.unlink(missing_ok=True)
