"""Receive an uploaded bundle into a temporary file, never into memory: hashed and counted as it
streams, refused as soon as it passes the size limit, removed when the request ends; whatever a
killed fleet left half-written is removed at the next start, once it is old enough that no worker
can still be writing it (workers sharing the artifacts directory share ``.incoming/``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import InvalidBundleError, StorageError, TooLargeError

log = logging.getLogger(__name__)

INCOMING = ".incoming"
"""Folder inside the artifacts directory: same filesystem, so a verified upload is renamed into place."""
SUFFIX = ".part"


@dataclass(frozen=True)
class Upload:
    path: Path
    size: int
    sha256: str


def incoming_dir(artifacts: Path) -> Path:
    return artifacts / INCOMING


STALE_UPLOAD_S = 3600.0
"""An upload's file is written at every chunk and removed when its request ends, so one untouched
this long was left by a killed worker; a younger one may be another worker's upload in progress."""


def clean_incoming(artifacts: Path, older_than_s: float = STALE_UPLOAD_S, now: float | None = None) -> int:
    """Remove uploads a killed fleet left behind (not modified for ``older_than_s``); how many.
    ``now``: seconds since the epoch (default: the wall clock; file times are wall-clock times)."""
    folder = incoming_dir(artifacts)
    cutoff = (time.time() if now is None else now) - older_than_s
    removed = 0
    for leftover in folder.glob(f"*{SUFFIX}") if folder.is_dir() else ():
        try:
            if leftover.stat().st_mtime >= cutoff:
                continue
            leftover.unlink()
        except FileNotFoundError:  # its upload ended meanwhile
            continue
        removed += 1
    if removed:
        log.info("removed %d unfinished upload(s) from %s", removed, folder)
    return removed


async def receive(chunks: AsyncIterator[bytes], artifacts: Path, limit: int, declared: str | None) -> Upload:
    """Stream ``chunks`` to a temporary file; the caller deletes ``Upload.path`` when done with it."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the bundle is {declared} bytes; the fleet accepts at most {limit}")
    folder = incoming_dir(artifacts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {folder} for uploads: {exc.strerror or exc}") from exc
    path = folder / f"{uuid.uuid4().hex}{SUFFIX}"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "wb") as handle:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLargeError(f"the bundle is larger than the fleet's {limit} byte limit")
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if declared is not None and declared.isdigit() and size < int(declared):
        path.unlink(missing_ok=True)
        raise InvalidBundleError(f"the upload ended after {size} of the {declared} bytes it announced")
    return Upload(path=path, size=size, sha256=digest.hexdigest())
