"""``edgefleet keys generate``: an operator's Ed25519 signing key pair on disk."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from converter.errors import InputError, OutputExistsError
from protocol.signing import (
    PUBLIC_KEY_SUFFIX,
    generate_private_key,
    key_id,
    load_private_key,
    private_key_pem,
    public_key_pem,
)

PRIVATE_KEY_SUFFIX = ".key"
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str


def generate_key_pair(out_dir: Path, name: str = "operator", force: bool = False) -> KeyPair:
    """Write ``out_dir/name.key`` (PKCS8 PEM, mode 0600) and ``out_dir/name.pub``."""
    if not _KEY_NAME.match(name):
        raise InputError(f"key name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    private_path = out_dir / f"{name}{PRIVATE_KEY_SUFFIX}"
    public_path = out_dir / f"{name}{PUBLIC_KEY_SUFFIX}"
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise OutputExistsError(f"{path} already exists; pass --force to replace the key pair")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create key directory {out_dir}: {exc.strerror}") from exc
    key = generate_private_key()
    _write(private_path, private_key_pem(key), 0o600)
    _write(public_path, public_key_pem(key.public_key()), 0o644)
    return KeyPair(private_path, public_path, key_id(key.public_key()))


def signing_key_id(private_path: Path) -> str:
    """Load a private key (raising ``KeyFileError`` with a clear message) and return its key id."""
    return key_id(load_private_key(private_path).public_key())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create a temporary file with ``mode`` from the start, fsync, rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # in case the file pre-existed with looser permissions
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
