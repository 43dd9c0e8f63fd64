"""Rollback grants: the operator's signed permission for devices to move back to an older model.

A desired state that names an older version of the model a device runs could be a replay (an
old, validly signed bundle served again to undo a fix). A device therefore moves back only with
a grant signed by a trusted operator key (``edgefleet model rollback-token`` on the operator's
machine), naming the model, the version, optionally the bundle and the devices, and an expiry.
The signature covers the grant's exact JSON text, carried as a string next to it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationError, model_validator

from protocol.errors import ProtocolError, SignatureError
from protocol.schema import DeviceId, ModelName, SemVer, Sha256Hex, WireModel
from protocol.signing import Signature
from protocol.validation import describe_first_error

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.signing import TrustedKeys


_KEY_ID = re.compile(r"[0-9a-f]{16}")
"""Matched with ``fullmatch``: ``match`` with ``$`` would let a trailing newline through."""


class RollbackGrantError(ProtocolError):
    """A move to an older model without a valid grant: missing, unsigned, expired or not covering it."""


class RollbackGrant(WireModel):
    """What the operator allows: ``devices`` (None: every device) may install ``name`` ``version``
    (only the bundle ``sha256`` when given) although they run a newer version, until ``expires_at``."""

    kind: Literal["rollback-grant"] = "rollback-grant"
    name: ModelName
    version: SemVer
    sha256: Sha256Hex | None = None
    devices: list[DeviceId] | None = Field(default=None, min_length=1)
    issued_at: datetime
    expires_at: datetime


class SignedRollbackGrant(WireModel):
    """A grant as it travels: its exact JSON text and the operator's Ed25519 signature over it."""

    grant: str = Field(max_length=64 * 1024)
    signature: Signature

    @model_validator(mode="after")
    def _key_id_is_hex(self) -> SignedRollbackGrant:
        if not _KEY_ID.fullmatch(self.signature.key_id):
            raise ValueError("signature.key_id must be the 16 hex digits of an operator key id")
        return self


def sign_grant(key: Ed25519PrivateKey, grant: RollbackGrant) -> SignedRollbackGrant:
    from protocol.signing import sign

    text = grant.model_dump_json()
    return SignedRollbackGrant(grant=text, signature=sign(key, text.encode()))


def _release(version: str) -> tuple[tuple[int, int, int], tuple[tuple[int, int | str], ...] | None]:
    core, _, rest = version.partition("+")[0].partition("-")
    major, minor, patch = (int(part) for part in core.split("."))
    if not rest:
        return (major, minor, patch), None
    pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in rest.split("."))
    return (major, minor, patch), pre


def is_older(version: str, than: str) -> bool:
    """Semantic-version order (a pre-release is older than its release; build metadata ignored)."""
    (a_core, a_pre), (b_core, b_pre) = _release(version), _release(than)
    if a_core != b_core:
        return a_core < b_core
    if a_pre is None or b_pre is None:
        return a_pre is not None and b_pre is None
    return a_pre < b_pre


def open_grant(signed: SignedRollbackGrant, trusted: TrustedKeys) -> RollbackGrant:
    """The grant inside ``signed`` once its signature checks out against ``trusted``."""
    key = signed.signature.key_id
    if key not in trusted.ids():
        raise RollbackGrantError(
            f"the rollback grant is signed by key {key}, which is not trusted here "
            f"(trusted: {', '.join(trusted.ids()) or 'none'})"
        )
    try:
        trusted.verify(signed.grant.encode(), signed.signature)
    except SignatureError as exc:
        raise RollbackGrantError(
            f"the rollback grant's signature does not check out against key {key}: the grant was "
            "altered after signing"
        ) from exc
    try:
        return RollbackGrant.model_validate_json(signed.grant)
    except ValidationError as exc:
        problem = describe_first_error(exc, "grant")
        raise RollbackGrantError(f"the rollback grant is malformed: {problem}") from exc


def check_grant(
    signed: SignedRollbackGrant,
    trusted: TrustedKeys,
    *,
    device_id: str,
    name: str,
    version: str,
    sha256: str,
    now: datetime,
) -> RollbackGrant:
    """The grant, when it is signed by a trusted key and covers this move now; else ``RollbackGrantError``."""
    grant = open_grant(signed, trusted)
    what = f"{name} {version}"
    if (grant.name, grant.version) != (name, version):
        raise RollbackGrantError(f"the rollback grant is for {grant.name} {grant.version}, not {what}")
    if grant.sha256 is not None and grant.sha256 != sha256:
        raise RollbackGrantError(f"the rollback grant is for another bundle of {what} ({grant.sha256[:12]})")
    if grant.devices is not None and device_id not in grant.devices:
        raise RollbackGrantError(f"the rollback grant for {what} does not name device {device_id}")
    if now >= grant.expires_at:
        raise RollbackGrantError(f"the rollback grant for {what} expired at {grant.expires_at.isoformat()}")
    if now < grant.issued_at:
        raise RollbackGrantError(
            f"the rollback grant for {what} is issued in the future ({grant.issued_at.isoformat()}); "
            "is this device's clock set?"
        )
    return grant


_DURATION = re.compile(r"(\d+)([smhd])")


def parse_duration_s(text: str) -> int:
    """``90s``, ``30m``, ``24h``, ``7d`` -> seconds; ``ValueError`` naming the expected form."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
