"""The agent process killed (SIGKILL) in every update state comes back serving a model.

The ``kill`` rows of the update fault table (``test_update_faults.FAULT_TABLE``): the real agent
is made to hang right after it saved the state (``EDGEFLEET_FAULT_HANG_IN``), its process group
is killed there, and a fresh process (without the hook) starts on the same state directory. From
its first answer it serves a model; it ends idle with the row's model, and the update events
both lives reported (kept in the on-disk outbox: there is no broker) are the row's chain.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from agent.outbox import Outbox
from agent.update.faults import HANG_ENV
from protocol.messages import UpdateEvent, parse_message
from protocol.topics import Topics
from protocol.update_state import UpdateState
from tests.agent.peer import FleetPeer
from tests.support.agent import DEVICE, Bundles, stage_directly
from tests.support.fault_table import NEW, FaultCase, check_reported, fault_cases
from tests.support.processes import agent_process

pytestmark = pytest.mark.slow


def _health(port: int) -> dict[str, object] | None:
    try:
        return dict(requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json())
    except requests.RequestException:
        return None


def _reported(state_dir: Path) -> list[UpdateEvent]:
    """The update events in the outbox, in the order they were published."""
    outbox = Outbox(state_dir / "outbox.sqlite")
    try:
        topic = Topics().events(DEVICE)
        return [
            parse_message(UpdateEvent, message.payload)
            for message in outbox.after(0, 10_000)
            if message.topic == topic
        ]
    finally:
        outbox.close()


@pytest.mark.parametrize("case", fault_cases("kill"))
def test_killed_in_every_update_state_comes_back_serving(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles, case: FaultCase
) -> None:
    # probation_s=0: the new model commits as soon as it is watched (mqtt port 1: no broker)
    first = agent_process(
        tmp_path,
        fleet_peer.url,
        trusted_dir,
        env={HANG_ENV: case.state},
        module="agent",
        log_name="first.log",
    )
    state_dir = first.state_dir
    stage_directly(state_dir, bundles.v1, trusted_dir)
    fleet_peer.deploy(DEVICE, getattr(bundles, case.bundle), "digits", NEW)
    first.start()
    try:
        # Logged once the state is saved and its event is in the outbox.
        first.wait_for_log(f"fault injection: hanging in state {case.state}", 60)
    finally:
        first.kill()  # the whole process group: a step's worker process too

    # The same device folder and state, without the hook.
    second = agent_process(tmp_path, fleet_peer.url, trusted_dir, module="agent", log_name="second.log")
    answers: list[dict[str, object]] = []
    second.start()
    try:

        def settled() -> bool:
            health = _health(second.port)
            if health is not None:
                answers.append(health)
            return (
                health is not None
                and health["update_state"] == UpdateState.IDLE
                and isinstance(health["model"], dict)
                and health["model"]["version"] == case.serving
            )

        second.wait_until(settled, f"the restarted agent to settle on {case.serving}", 60)
    finally:
        second.kill()  # settled: no need to wait for a flush to the broker that is not there
    assert answers and all(a["model"] is not None for a in answers), answers  # never without a model
    check_reported(case, _reported(state_dir))
