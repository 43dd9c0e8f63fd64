"""The replay/downgrade rule: a device moves to an older version of the model it runs only when
the operator allowed it, or when it is the one step back to the model it ran just before.

- same name, newer or equal version, or another model name: allowed (a deliberate deployment);
- an older version whose bundle is the device's previous model (``active.json``'s ``previous``,
  which the device itself committed before): allowed without a grant. This is what a fleet
  rollout's rollback (automatic on failed gates, or ``edgefleet rollout rollback``) does, and
  the fleet holds no operator key to sign one;
- any other older version: only with a ``SignedRollbackGrant`` in the desired state, signed by
  a key in ``trusted_keys``, naming this model and version (and bundle, when it says), this
  device (or all), not expired.

Checking a grant's signature needs ``cryptography``; it is imported only on that rare path, so
the serving process does not carry it otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from protocol.errors import ProtocolError
from protocol.messages import DesiredModel
from protocol.rollback import SignedRollbackGrant, check_grant, is_older
from protocol.schema import ModelRef


class DowngradeGuard:
    def __init__(self, device_id: str, trusted_paths: Sequence[Path]) -> None:
        self.device_id = device_id
        self.trusted_paths = list(trusted_paths)

    def refusal(
        self,
        target: DesiredModel,
        grant: SignedRollbackGrant | None,
        *,
        running: ModelRef | None,
        previous_sha256: str | None,
        now: datetime,
    ) -> str | None:
        """None when the move to ``target`` is allowed; else why not, in words."""
        if running is None or running.name != target.name or not is_older(target.version, running.version):
            return None
        if previous_sha256 is not None and target.sha256 == previous_sha256:
            return None
        move = f"refusing to move from {running.name} {running.version} back to {target.version}"
        if grant is None:
            return (
                f"{move}: an older version needs a rollback grant signed by the operator "
                "(edgefleet model rollback-token), and the desired state carries none"
            )
        from protocol.signing import TrustedKeys

        try:
            trusted = TrustedKeys.from_paths(self.trusted_paths)
            check_grant(
                grant,
                trusted,
                device_id=self.device_id,
                name=target.name,
                version=target.version,
                sha256=target.sha256,
                now=now,
            )
        except ProtocolError as exc:
            return f"{move}: {exc}"
        return None
