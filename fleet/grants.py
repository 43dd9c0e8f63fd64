"""Rollback grants on the fleet: stored as the operator signed them, served in desired states.

The fleet holds no operator key: it cannot make a grant, only keep one. It checks the signature
against its trusted keys when a grant is uploaded (so garbage is refused at once) and hands the
newest unexpired grant that covers a device's target in that device's desired state; the device
checks the grant again with its own trusted keys (``agent.update.downgrade``).
Files: ``ARTIFACTS/rollback-grants/NAME/VERSION/<digest>.json``.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from fleet.errors import InvalidBundleError
from protocol.rollback import RollbackGrant, RollbackGrantError, SignedRollbackGrant, open_grant
from protocol.signing import TrustedKeys

GRANTS_DIR = "rollback-grants"


class InvalidGrantError(InvalidBundleError):
    """An uploaded rollback grant that is not signed by a trusted key or not for this model (400)."""


class GrantStore:
    def __init__(self, artifacts: Path, trusted: TrustedKeys) -> None:
        self.root = artifacts / GRANTS_DIR
        self.trusted = trusted

    def add(self, name: str, version: str, signed: SignedRollbackGrant) -> RollbackGrant:
        """Check and keep ``signed``; ``InvalidGrantError`` says why it is refused."""
        try:
            grant = open_grant(signed, self.trusted)
        except RollbackGrantError as exc:
            raise InvalidGrantError(str(exc)) from exc
        if (grant.name, grant.version) != (name, version):
            raise InvalidGrantError(
                f"the rollback grant is for {grant.name} {grant.version}, not {name} {version}"
            )
        folder = self.root / name / version
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(signed.grant.encode()).hexdigest()[:24]}.json"
        temp = path.with_suffix(".tmp")
        temp.write_text(signed.model_dump_json())
        os.replace(temp, path)
        return grant

    def for_device(
        self, name: str, version: str, sha256: str, device_id: str, now: datetime
    ) -> SignedRollbackGrant | None:
        """The unexpired grant for this target and device that lasts longest, if any."""
        folder = self.root / name / version
        best: tuple[datetime, SignedRollbackGrant] | None = None
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                signed = SignedRollbackGrant.model_validate_json(path.read_bytes())
                grant = RollbackGrant.model_validate_json(signed.grant)
            except (OSError, ValidationError):
                continue
            if grant.expires_at <= now or (grant.sha256 is not None and grant.sha256 != sha256):
                continue
            if grant.devices is not None and device_id not in grant.devices:
                continue
            if best is None or grant.expires_at > best[0]:
                best = (grant.expires_at, signed)
        return best[1] if best is not None else None
