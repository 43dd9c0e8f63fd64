"""The update state machine against a real HTTP peer, real files and a real TFLite runtime."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.errors import UnroutedEventError
from agent.store import ActivePointer, ModelStore
from agent.update import RESUME, TRANSITIONS, Event, State
from agent.update.machine import route
from agent.update.record import RecordFile, UpdateRecord
from agent.update.runner import StepRunner
from protocol.messages import DesiredModel, UpdateEvent
from tests.agent.peer import FleetPeer
from tests.support.agent import DEVICE, Bundles, stage_directly
from tests.support.updater import build_updater, serving

INSTALL_CHAIN = [
    State.DOWNLOAD,
    State.VERIFY,
    State.STAGE,
    State.SMOKE,
    State.ACTIVATE,
    State.PROBATION,
    State.COMMIT,
]


def test_v1_then_v2_installs_and_keeps_the_previous(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    events: list[UpdateEvent] = []
    updater = build_updater(tmp_path / "state", trusted_dir, fleet_peer.url, events)
    assert serving(updater) is None
    updater.check()  # nothing desired yet
    assert serving(updater) is None and not events

    v1 = fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    updater.check()
    assert serving(updater) == "1.0.0"
    assert [e.state for e in events] == INSTALL_CHAIN
    assert all(e.ok for e in events) and events[0].previous is None

    events.clear()
    v2 = fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    updater.check()
    assert serving(updater) == "2.0.0"
    assert events[-1].state is State.COMMIT and events[-1].previous is not None
    assert events[-1].previous.version == "1.0.0"
    store = updater.store
    assert store.read_pointer() == ActivePointer(active=v2, previous=v1)
    assert set(store.stored()) == {v1, v2}  # the previous model stays on disk
    assert updater.state is State.IDLE
    assert not list(store.downloads_dir.iterdir())

    events.clear()
    updater.check()  # already there: nothing happens
    assert not events


class CountingRunner:
    """The updater's own step runner, with every call counted by step name."""

    def __init__(self, inner: StepRunner) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        step = getattr(self.inner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return step(*args, **kwargs)

        return counted


def test_one_update_verifies_once_and_smoke_tests_once(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    """Each heavy step runs once per update: activation and probation trust what verify and
    smoke established for this target instead of running them again."""
    events: list[UpdateEvent] = []
    updater = build_updater(tmp_path / "state", trusted_dir, fleet_peer.url, events)
    runner = CountingRunner(updater.runner)
    updater.runner = runner
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    updater.check()
    assert serving(updater) == "1.0.0"
    assert [e.state for e in events] == INSTALL_CHAIN and all(e.ok for e in events)
    assert runner.calls == Counter(fetch_desired=1, download=1, verify=1, stage=1, smoke=1)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("flipped-byte", "sha256 mismatch"),
        ("untrusted-key", "signature check failed"),
        ("smoke-mismatch", "smoke test failed"),
    ],
)
def test_bad_bundles_are_refused_and_the_old_model_keeps_serving(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles, case: str, reason: str
) -> None:
    state = tmp_path / "state"
    v1 = stage_directly(state, bundles.v1, trusted_dir)
    events: list[UpdateEvent] = []
    updater = build_updater(state, trusted_dir, fleet_peer.url, events)
    assert serving(updater) == "1.0.0"
    if case == "flipped-byte":
        spoiled = bytearray(bundles.v2)
        spoiled[len(spoiled) // 2] ^= 0x01
        bad = fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0", served=bytes(spoiled))
    elif case == "untrusted-key":
        bad = fleet_peer.deploy(DEVICE, bundles.untrusted, "digits", "2.0.1")
    else:
        bad = fleet_peer.deploy(DEVICE, bundles.smoke_bad, "digits", "2.0.2")
    updater.check()

    assert serving(updater) == "1.0.0"
    assert updater.store.read_pointer().active == v1
    assert updater.store.stored() == [v1]
    assert [e.state for e in events][-2:] == [State.ROLLBACK, State.FAILED]
    failed = events[-1]
    assert not failed.ok and failed.reason is not None and reason in failed.reason
    if case == "untrusted-key":
        assert "not trusted" in failed.reason
    assert updater.record.failed_sha256 == bad

    # Not retried in a loop: the same desired state gives no new attempt.
    events.clear()
    bundle_fetches = sum(1 for path in fleet_peer.requests if path.startswith("/bundles/"))
    updater.check()
    assert not events
    assert sum(1 for path in fleet_peer.requests if path.startswith("/bundles/")) == bundle_fetches

    # A new desired state is tried, and installs. (The flipped-byte case named the good v2's sha:
    # the fleet must change the desired state, here by withdrawing it, before v2 is tried again.)
    if case == "flipped-byte":
        fleet_peer.clear(DEVICE)
        updater.check()
        assert updater.record.failed_sha256 is None
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    updater.check()
    assert serving(updater) == "2.0.0"
    assert updater.record.failed_sha256 is None


# The model a new process ends up serving when the last one died in each state, with v1 serving
# before the update and v2 (good) desired. Never none.
CRASH_OUTCOME = {
    "idle": "2.0.0",  # nothing was under way: the check installs v2
    "download": "2.0.0",  # redone
    "verify": "2.0.0",
    "stage": "2.0.0",
    "smoke": "2.0.0",
    "activate": "1.0.0",  # rolled back: the new model may have killed the process
    "probation": "2.0.0",  # watched again (probation_s=0 here), then committed
    "commit": "2.0.0",  # the switch had completed
    "rollback": "1.0.0",
    "failed": "1.0.0",
    "garbage": "1.0.0",  # an unknown state rolls back (and remembers nothing to skip)
}


@pytest.mark.parametrize("died_in", list(CRASH_OUTCOME))
def test_crash_in_every_state_resumes_to_old_or_new(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles, died_in: str
) -> None:
    state = tmp_path / "state"
    v1 = stage_directly(state, bundles.v1, trusted_dir)
    v2 = fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    store = ModelStore(state)
    prior = store.read_pointer()
    target = DesiredModel.model_validate(fleet_peer.desired[DEVICE])
    # What the dead process left behind on disk in that state.
    if died_in in ("verify", "stage", "smoke", "activate", "probation", "commit", "rollback"):
        (store.download_path(v2)).write_bytes(bundles.v2)
    if died_in in ("smoke", "activate", "probation", "commit", "rollback"):
        stage_directly(state, bundles.v2, trusted_dir, activate=False)
    if died_in in ("activate", "probation", "commit", "rollback"):
        store.write_pointer(ActivePointer(active=v2, previous=v1))
    if died_in == "download":
        (store.downloads_dir / f"{v2}.bundle.part").write_bytes(bundles.v2[:100])
    known = died_in if died_in in set(State) else State.ROLLBACK  # "garbage" is written below
    record = UpdateRecord(
        state=State(known), state_saves=1, update_id="crashed", target=target, prior=prior, reason="crash"
    )
    if died_in == "idle":
        record = UpdateRecord()
    if died_in == "failed":
        record.failed_sha256 = v2
    RecordFile(state / "update.json").save(record)
    if died_in == "garbage":  # a state this agent does not know: a newer agent's, or damage
        saved = json.loads((state / "update.json").read_text())
        (state / "update.json").write_text(json.dumps({**saved, "state": "garbage"}))

    events: list[UpdateEvent] = []
    updater = build_updater(state, trusted_dir, fleet_peer.url, events)
    assert serving(updater) is not None  # serving from the first moment, before any check
    updater.check()

    expected = CRASH_OUTCOME[died_in]
    assert serving(updater) == expected
    assert updater.state is State.IDLE
    pointer = store.read_pointer()
    assert pointer.active == (v2 if expected == "2.0.0" else v1)
    if expected == "1.0.0":
        assert v2 not in store.stored()
    assert json.loads((state / "update.json").read_text())["state"] == State.IDLE


def test_a_crash_loop_gives_up_and_rolls_back(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    state = tmp_path / "state"
    stage_directly(state, bundles.v1, trusted_dir)
    v2 = fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    store = ModelStore(state)
    record = UpdateRecord(
        state=State.SMOKE,
        state_saves=3,  # the process has died in smoke three times already
        update_id="loop",
        target=DesiredModel.model_validate(fleet_peer.desired[DEVICE]),
        prior=store.read_pointer(),
    )
    RecordFile(state / "update.json").save(record)
    events: list[UpdateEvent] = []
    updater = build_updater(state, trusted_dir, fleet_peer.url, events)
    updater.check()
    assert serving(updater) == "1.0.0"
    assert [e.state for e in events] == [State.SMOKE, State.ROLLBACK, State.FAILED]
    assert events[-1].reason is not None and "gave up after 3 restarts in state smoke" in events[-1].reason
    assert updater.record.failed_sha256 == v2


def test_a_model_that_keeps_killing_the_agent_on_probation_is_rolled_back_at_start_up(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    state = tmp_path / "state"
    v1 = stage_directly(state, bundles.v1, trusted_dir)
    prior = ModelStore(state).read_pointer()
    v2 = stage_directly(state, bundles.v2, trusted_dir)  # active: the new model was switched in
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    record = UpdateRecord(
        state=State.PROBATION,
        state_saves=3,  # the process died on probation three times already
        update_id="loop",
        target=DesiredModel.model_validate(fleet_peer.desired[DEVICE]),
        prior=prior,
    )
    RecordFile(state / "update.json").save(record)
    events: list[UpdateEvent] = []
    updater = build_updater(state, trusted_dir, fleet_peer.url, events)  # start-up only, no check
    assert serving(updater) == "1.0.0"  # rolled back before serving a single request on v2
    assert [e.state for e in events] == [State.PROBATION, State.ROLLBACK, State.FAILED]
    assert events[-1].reason is not None and "restarts in state probation" in events[-1].reason
    assert updater.store.read_pointer().active == v1 and updater.record.failed_sha256 == v2


def test_every_state_routes_ok_and_fail_and_resumes_somewhere() -> None:
    """The tables are complete: a new state without its rows fails here, not on a device."""
    for state in State:
        if state is State.IDLE:
            assert route(state, Event.START) is State.DOWNLOAD
            continue
        assert {(state, Event.OK), (state, Event.FAIL)} <= TRANSITIONS.keys(), state
        assert state in RESUME, state


def test_an_unrouted_event_is_a_bug_not_a_rollback() -> None:
    with pytest.raises(UnroutedEventError, match="no transition for event 'start' in state 'commit'"):
        route(State.COMMIT, Event.START)


def test_activation_is_reached_only_through_verify_and_smoke() -> None:
    """The serving process switches only to a model this update verified and smoke-tested: the
    only edge into activate leaves smoke, the only one into smoke leaves stage, the only one into
    stage leaves verify; an interrupted activation never resumes as one."""
    into = {state: {src for (src, event), dst in TRANSITIONS.items() if dst is state} for state in State}
    assert into[State.ACTIVATE] == {State.SMOKE}
    assert into[State.SMOKE] == {State.STAGE}
    assert into[State.STAGE] == {State.VERIFY}
    assert RESUME[State.ACTIVATE] is State.ROLLBACK
    assert all(RESUME[state] is state for state in (State.VERIFY, State.STAGE, State.SMOKE))
