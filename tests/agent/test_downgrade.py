"""The real updater refuses an older model without the operator's grant, goes one step back to its
previous model without one (a rollout rollback), and installs an older model with one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.update import State
from protocol.messages import DesiredState, UpdateEvent
from protocol.rollback import RollbackGrant, SignedRollbackGrant, sign_grant
from protocol.signing import load_private_key
from tests.agent.peer import FleetPeer
from tests.support.agent import DEVICE, Bundles
from tests.support.updater import build_updater, serving


class _WithGrant:
    """The agent's runner, with the operator's grant added to each desired state it reads (the
    stand-in fleet does not serve grants; the real fleet's serving is tested in tests/tls)."""

    def __init__(self, inner: Any, grant: SignedRollbackGrant) -> None:
        self.inner = inner
        self.grant = grant

    def fetch_desired(self) -> DesiredState:
        desired: DesiredState = self.inner.fetch_desired()
        return desired.model_copy(update={"rollback_grant": self.grant})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_an_older_model_needs_the_operators_grant(
    tmp_path: Path,
    trusted_dir: Path,
    fleet_peer: FleetPeer,
    bundles: Bundles,
    signing_keys: tuple[Path, Path],
) -> None:
    events: list[UpdateEvent] = []
    updater = build_updater(tmp_path / "state", trusted_dir, fleet_peer.url, events)
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    updater.check()
    assert serving(updater) == "2.0.0"

    events.clear()
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")  # older, and never ran here: a replay?
    updater.check()
    updater.check()
    assert serving(updater) == "2.0.0"
    assert [(e.state, e.ok) for e in events] == [(State.FAILED, False)], "reported once, not per check"
    assert events[0].reason is not None
    assert "refusing to move from digits 2.0.0 back to 1.0.0" in events[0].reason

    now = datetime.now(UTC)
    grant = RollbackGrant(
        name="digits", version="1.0.0", devices=[DEVICE], issued_at=now, expires_at=now + timedelta(hours=1)
    )
    updater.runner = _WithGrant(updater.runner, sign_grant(load_private_key(signing_keys[0]), grant))
    events.clear()
    updater.check()
    assert serving(updater) == "1.0.0"
    assert events[-1].state is State.COMMIT


def test_one_step_back_to_the_previous_model_needs_no_grant(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    events: list[UpdateEvent] = []
    updater = build_updater(tmp_path / "state", trusted_dir, fleet_peer.url, events)
    for bundle, version in ((bundles.v1, "1.0.0"), (bundles.v2, "2.0.0"), (bundles.v1, "1.0.0")):
        fleet_peer.deploy(DEVICE, bundle, "digits", version)
        updater.check()
        assert serving(updater) == version
    assert events[-1].state is State.COMMIT
