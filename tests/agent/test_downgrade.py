"""The real updater refuses an older model without the operator's grant, goes one step back to its
previous model without one (a rollout rollback) but only once per newest version, remembers the
newest version of each model across a detour through another model, and installs an older model
with a grant."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.update import State
from protocol.bundle import MODEL, read_bundle
from protocol.messages import DesiredState, UpdateEvent
from protocol.rollback import RollbackGrant, SignedRollbackGrant, sign_grant
from protocol.signing import load_private_key
from tests.agent.bundles import build_bundle
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

    _granted(updater, signing_keys[0], "1.0.0")
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


def _granted(updater: Any, key: Path, version: str) -> None:
    now = datetime.now(UTC)
    grant = RollbackGrant(
        name="digits", version=version, devices=[DEVICE], issued_at=now, expires_at=now + timedelta(hours=1)
    )
    updater.runner = _WithGrant(updater.runner, sign_grant(load_private_key(key), grant))


def _running(updater: Any) -> tuple[str, str] | None:
    model = updater.holder.current
    return (model.manifest.name, model.manifest.version) if model else None


def test_a_detour_through_another_model_does_not_open_the_way_back(
    tmp_path: Path,
    trusted_dir: Path,
    fleet_peer: FleetPeer,
    bundles: Bundles,
    signing_keys: tuple[Path, Path],
) -> None:
    """A replayer who first moves the device to another model cannot then bring back an old
    version of the first one: the device remembers digits 2.0.0 across the detour."""
    tflite = read_bundle(io.BytesIO(bundles.v1)).members[MODEL]
    other = build_bundle(tflite, bundles.samples_x, load_private_key(signing_keys[0]), name="other")
    events: list[UpdateEvent] = []
    updater = build_updater(tmp_path / "state", trusted_dir, fleet_peer.url, events)
    for bundle, name, version in (
        (bundles.v1, "digits", "1.0.0"),
        (bundles.v2, "digits", "2.0.0"),
        (other, "other", "1.0.0"),  # another model name: a deliberate deployment, allowed
    ):
        fleet_peer.deploy(DEVICE, bundle, name, version)
        updater.check()
        assert _running(updater) == (name, version)

    events.clear()
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")  # the old first model, replayed
    updater.check()
    assert _running(updater) == ("other", "1.0.0")
    assert [(e.state, e.ok) for e in events] == [(State.FAILED, False)]
    assert events[0].reason is not None
    assert "refusing to move to digits 1.0.0: this device has committed digits 2.0.0" in events[0].reason

    _granted(updater, signing_keys[0], "1.0.0")
    updater.check()
    assert _running(updater) == ("digits", "1.0.0")
    assert events[-1].state is State.COMMIT


def test_the_step_back_without_a_grant_is_taken_once_not_toggled(
    tmp_path: Path,
    trusted_dir: Path,
    fleet_peer: FleetPeer,
    bundles: Bundles,
    signing_keys: tuple[Path, Path],
) -> None:
    """v1 -> v2 -> v1 (a rollout rollback) -> v2 -> v1 again: the second step back needs a grant,
    also for an agent started again on the same state directory."""
    events: list[UpdateEvent] = []
    state = tmp_path / "state"
    updater = build_updater(state, trusted_dir, fleet_peer.url, events)
    for bundle, version in ((bundles.v1, "1.0.0"), (bundles.v2, "2.0.0"), (bundles.v1, "1.0.0")):
        fleet_peer.deploy(DEVICE, bundle, "digits", version)
        updater.check()
        assert serving(updater) == version
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    updater.check()
    assert serving(updater) == "2.0.0"

    events.clear()
    updater = build_updater(state, trusted_dir, fleet_peer.url, events)  # the marks are on disk
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")  # the previous model, once more
    updater.check()
    assert serving(updater) == "2.0.0"
    assert [(e.state, e.ok) for e in events] == [(State.FAILED, False)]
    assert events[0].reason is not None
    assert "refusing to move from digits 2.0.0 back to 1.0.0" in events[0].reason
    assert "the one step back without a grant from digits 2.0.0 was taken already" in events[0].reason

    _granted(updater, signing_keys[0], "1.0.0")
    updater.check()
    assert serving(updater) == "1.0.0"
    assert events[-1].state is State.COMMIT
