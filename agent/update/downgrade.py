"""The replay/downgrade rule: a device never goes below the newest version of a model it has
committed, unless the operator allowed it, or it is the one step back a rollout rollback takes.

The device keeps, per model name, the newest version it has committed (``versions.json``, its
high-water mark; never lowered) and whether it has run an older one since. The running model is
the last thing committed whenever the guard is asked (the updater asks only with no update in
flight), so each check first records it. Then, for a desired model:

- no mark for its name, or a version at or above the mark: allowed (a deliberate deployment);
- below the mark, and the device runs the mark's version, the target is its previous bundle
  (``active.json``'s ``previous``, which the device itself committed) and the device has not run
  below this mark before: allowed without a grant, once. This is what a fleet rollout's rollback
  (automatic on failed gates, or ``edgefleet rollout rollback``) does, and the fleet holds no
  operator key to sign one; once spent, a replayer cannot toggle the device between its last two
  models, nor take it back after a detour through another model name;
- anything else below the mark: only with a ``SignedRollbackGrant`` in the desired state, signed by
  a key in ``trusted_keys``, naming this model and version (and bundle, when it says), this
  device (or all), not expired.

Checking a grant's signature needs ``cryptography``; it is imported only on that rare path, so
the serving process does not carry it otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from agent.errors import StoreError
from agent.store import VersionMark, VersionMarks
from protocol.errors import ProtocolError
from protocol.messages import DesiredModel
from protocol.rollback import SignedRollbackGrant, check_grant, is_older
from protocol.schema import ModelRef

log = logging.getLogger(__name__)


def _observed(marks: dict[str, VersionMark], running: ModelRef) -> VersionMark | None:
    """The mark of ``running``'s name once the device is seen running it; None: unchanged."""
    mark = marks.get(running.name)
    if mark is None or is_older(mark.highest, running.version):
        return VersionMark(highest=running.version)
    if is_older(running.version, mark.highest) and not mark.ran_older:
        return mark.model_copy(update={"ran_older": True})
    return None


class DowngradeGuard:
    def __init__(self, device_id: str, trusted_paths: Sequence[Path], marks: VersionMarks) -> None:
        self.device_id = device_id
        self.trusted_paths = list(trusted_paths)
        self.marks = marks

    def _record(self, running: ModelRef | None) -> dict[str, VersionMark]:
        """The marks, with the running (committed) model recorded and saved."""
        try:
            marks = self.marks.load()
        except StoreError as exc:
            # Never weaker than before marks existed: the running model below still guards.
            log.error("%s; starting the version marks again from the running model", exc)
            marks = {}
        if running is None:
            return marks
        mark = _observed(marks, running)
        if mark is not None:
            marks[running.name] = mark
            try:
                self.marks.save(marks)
            except OSError as exc:
                log.error("cannot save the version marks to %s: %s", self.marks.path, exc)
        return marks

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
        mark = self._record(running).get(target.name)
        if mark is None or not is_older(target.version, mark.highest):
            return None
        at_mark = (
            running is not None
            and running.name == target.name
            and not is_older(running.version, mark.highest)
        )
        step_back = previous_sha256 is not None and target.sha256 == previous_sha256 and at_mark
        if step_back and not mark.ran_older:
            return None
        if running is not None and running.name == target.name:
            move = f"refusing to move from {running.name} {running.version} back to {target.version}"
        else:
            move = (
                f"refusing to move to {target.name} {target.version}: this device has committed "
                f"{target.name} {mark.highest}"
            )
        if grant is None:
            spent = (
                f" (the one step back without a grant from {target.name} {mark.highest} was taken already)"
                if step_back
                else ""
            )
            return (
                f"{move}: an older version needs a rollback grant signed by the operator "
                f"(edgefleet model rollback-token), and the desired state carries none{spent}"
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
