"""Ed25519 signing of bundle manifests, and the set of keys a verifier trusts."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from protocol.errors import KeyFileError, SignatureError
from protocol.schema import WireModel
from protocol.validation import describe_first_error

# cryptography is imported where a key is used, not here: reading a bundle's names, hashes and
# manifest must stay cheap for the agent's serving process, which never verifies a signature
# (that happens in its update worker) and would otherwise carry ~7.5 MB of it for nothing.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_SUFFIX = ".pub"


class Signature(WireModel):
    """``manifest.sig``: which key signed the manifest bytes, and the signature."""

    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str
    signature: str
    """Base64 of the 64-byte Ed25519 signature over the exact bytes of manifest.json."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its sha256."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_private_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{path} is not an unencrypted PEM private key; make one with `edgefleet keys generate`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(data: bytes, source: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{source} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{source} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def sign(private_key: Ed25519PrivateKey, data: bytes) -> Signature:
    return Signature(
        key_id=key_id(private_key.public_key()),
        signature=base64.b64encode(private_key.sign(data)).decode("ascii"),
    )


def parse_signature(data: bytes) -> Signature:
    try:
        return Signature.model_validate_json(data)
    except ValidationError as exc:
        raise SignatureError(
            f"manifest.sig is not a valid signature record: {describe_first_error(exc, 'signature')}"
        ) from exc


class TrustedKeys:
    """The operator public keys a verifier accepts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {key_id(k): k for k in keys}

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> TrustedKeys:
        """Load ``.pub`` PEM files; a directory contributes every ``*.pub`` inside it."""
        keys: list[Ed25519PublicKey] = []
        for path in paths:
            files = sorted(path.glob(f"*{PUBLIC_KEY_SUFFIX}")) if path.is_dir() else [path]
            for file in files:
                try:
                    data = file.read_bytes()
                except OSError as exc:
                    raise KeyFileError(f"cannot read trusted key {file}: {exc.strerror}") from exc
                keys.append(load_public_key(data, str(file)))
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, data: bytes, signature: Signature) -> None:
        """Raise SignatureError unless ``signature`` over ``data`` is by a trusted key."""
        from cryptography.exceptions import InvalidSignature

        key = self._keys.get(signature.key_id)
        if key is None:
            raise SignatureError(
                f"the bundle is signed by key {signature.key_id}, which is not trusted here "
                f"(trusted: {', '.join(self.ids()) or 'none'})"
            )
        try:
            raw = base64.b64decode(signature.signature, validate=True)
            key.verify(raw, data)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(
                f"the manifest signature does not match key {signature.key_id}: "
                "the manifest was altered after signing, or signed by another key"
            ) from exc
