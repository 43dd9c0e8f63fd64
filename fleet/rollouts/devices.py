"""Each assigned device's rollout state, from what the fleet knows of it. Pure: facts in, states out.

A device is **offline** when its stored presence is not ``online``: the agent's retained status says
``online`` at every connect, and the broker publishes its last will (``offline``) once it misses the
MQTT keepalive (1.5x, 30 s by default). ``last_seen`` is not used: a connected device that sends
nothing is still reachable (the nudge reaches it, and it polls).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleet.rollout_spec import SETTLED_DEVICE_STATES, DeviceRolloutState
from fleet.storage.rollout_devices import DeviceFacts

State = DeviceRolloutState


@dataclass(frozen=True)
class Step:
    state: DeviceRolloutState
    detail: str | None
    nudge: bool = False
    """Tell it to check for an update now (it came back online)."""
    restore: bool = False
    """Give it back its previous assignment (skipped before it served the model)."""


def _offline(facts: DeviceFacts) -> str:
    seen = facts.last_seen.strftime("%Y-%m-%d %H:%M:%S UTC") if facts.last_seen else "never"
    return f"offline (last seen {seen})"


def next_step(
    facts: DeviceFacts,
    target: tuple[str, str],
    *,
    now: datetime,
    install_timeout_s: float,
    deadline_at: datetime | None,
) -> Step | None:
    """The device's new state, or None when it stays where it is."""
    step = _decide(facts, target, now, install_timeout_s, deadline_at)
    if step.state == facts.state and not step.nudge:
        return None
    return step


def _decide(  # noqa: PLR0911 - one return per row of the decision table, read top to bottom
    facts: DeviceFacts,
    target: tuple[str, str],
    now: datetime,
    install_timeout_s: float,
    deadline_at: datetime | None,
) -> Step:
    if facts.state in SETTLED_DEVICE_STATES:
        return Step(facts.state, None)
    if facts.failure is not None:
        return Step(State.FAILED, facts.failure)
    if facts.committed == target:
        return Step(State.DONE, "committed")
    serving = facts.serving == target
    past_deadline = deadline_at is not None and now >= deadline_at
    if not facts.online and past_deadline:
        # A device serving the model keeps it; one that never got it goes back to what it had.
        return Step(State.SKIPPED_OFFLINE, f"{_offline(facts)} at the deadline", restore=not serving)
    if serving:
        return Step(State.PROBATION, "serving; not committed yet")
    if not facts.online:
        return Step(State.PENDING, _offline(facts))
    if facts.state is State.PENDING:
        return Step(State.INSTALLING, "online: told to install", nudge=True)
    waited = (now - facts.state_at).total_seconds()
    if facts.state is State.INSTALLING and waited >= install_timeout_s:
        name, version = target
        return Step(
            State.FAILED,
            f"online and not serving {name} {version} {waited:.0f} s after it was told "
            f"(update state {facts.update_state or 'unknown'})",
        )
    if facts.state is State.PROBATION:
        # It served the model and no longer does, without reporting a failure: install again.
        return Step(State.INSTALLING, "no longer serving the model", nudge=True)
    return Step(facts.state, None)
