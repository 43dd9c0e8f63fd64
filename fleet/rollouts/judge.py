"""One tick of a running rollout: settle each device's state, then judge the current wave on the
devices that reached the model, promote, fail, or say what it waits for. The controller holds the
lock and the transaction; these functions read and write inside it."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row

from fleet.rollout_spec import (
    SETTLED_DEVICE_STATES,
    DeviceRolloutState,
    GateResult,
    Gates,
    RolloutState,
    gate_dicts,
)
from fleet.rollouts.devices import next_step
from fleet.rollouts.gates import evaluate, health, too_little
from fleet.storage import repository
from fleet.storage import rollouts as store
from fleet.storage.rollout_devices import Change, assign_through, member_facts, restore_devices, set_states

log = logging.getLogger(__name__)

Dev = DeviceRolloutState
REACHED = frozenset({Dev.PROBATION, Dev.DONE})
"""A wave is judged on the devices in these states: they serve the model (and reported on it)."""


@dataclass(frozen=True)
class Member:
    """One assigned device at this tick: its (new) state, why, and whether it is online."""

    device_id: str
    state: DeviceRolloutState
    detail: str | None
    online: bool


def _tally(members: dict[str, Member], counts: Counter[DeviceRolloutState]) -> str:
    """``2 done, 1 pending`` over the assigned devices."""
    order = list(DeviceRolloutState)
    parts = [f"{counts[state]} {state.value}" for state in order if counts[state]]
    return ", ".join(parts) or f"{len(members)} devices"


def settle(
    conn: Connection, row: Row[Any], gates: Gates, now: datetime
) -> tuple[dict[str, Member], list[str]]:
    """Move every assigned device to the state its facts say; those that came back online are
    told to install, those skipped at the deadline get their previous assignment back."""
    target = (row.model_name, row.model_version)
    deadline = repository.utc(row.deadline_at) if row.deadline_at is not None else None
    members: dict[str, Member] = {}
    changes: list[Change] = []
    restore: list[str] = []
    nudge: list[str] = []
    for facts in member_facts(conn, row):
        step = next_step(
            facts, target, now=now, install_timeout_s=gates.install_timeout_s, deadline_at=deadline
        )
        if step is None:
            members[facts.device_id] = Member(facts.device_id, facts.state, facts.detail, facts.online)
            continue
        members[facts.device_id] = Member(facts.device_id, step.state, step.detail, facts.online)
        if step.state != facts.state:
            changes.append((facts.device_id, step.state, step.detail))
            log.info("rollout %d: %s %s -> %s (%s)", row.id, facts.device_id, facts.state, step.state,
                     step.detail)  # fmt: skip
        if step.nudge:
            nudge.append(facts.device_id)
        if step.restore:
            restore.append(facts.device_id)
    set_states(conn, row.id, changes, now)
    if restore:
        restore_devices(conn, row.id, restore)
    return members, nudge + restore


def judge(  # noqa: PLR0911 - each wait or verdict returns where it is decided
    conn: Connection,
    row: Row[Any],
    gates: Gates,
    members: dict[str, Member],
    failures: list[str],
    now: datetime,
) -> list[str]:
    """Judge the current wave on the devices that reached the model, or say what it waits for."""
    wave = row.wave + 1
    elapsed = (now - repository.utc(row.wave_started_at)).total_seconds()
    if elapsed < gates.soak_s:
        say(conn, row, now, f"wave {wave} soaking ({elapsed:.0f}/{gates.soak_s:.0f} s)")
        return []
    counts = Counter(m.state for m in members.values())
    reached = sorted(m.device_id for m in members.values() if m.state in REACHED)
    if counts[Dev.INSTALLING]:
        say(conn, row, now, f"wave {wave} waiting: {_tally(members, counts)}")
        return []
    if not reached and counts[Dev.PENDING]:
        say(conn, row, now, f"wave {wave} waiting: no device reached the model; {_tally(members, counts)}")
        return []
    offline = {m.device_id for m in members.values() if not m.online}
    per_device, baseline = store.wave_windows(conn, row, reached)
    waited = elapsed - gates.soak_s
    measured = health(gates, per_device, baseline, offline)
    lacking = too_little(gates, measured, waited_out=waited >= gates.max_sample_wait_s) if reached else None
    if lacking is not None:
        if waited < gates.max_sample_wait_s:
            say(conn, row, now, f"wave {wave} waiting for telemetry: {lacking}")
            return []
        reason = (
            f"wave {wave} halted: too little telemetry to judge {waited:.0f} s after the soak: "
            f"{lacking}; resume to wait again, or roll back"
        )
        store.set_fields(conn, row.id, now, state=RolloutState.HALTED.value, reason=reason)
        log.warning("rollout %d halted: %s", row.id, reason)
        return []
    results = evaluate(gates, measured, failures)
    if all(result.ok for result in results):
        return promote(conn, row, members, results, now)
    return fail(conn, row, gates, results, now)


def say(conn: Connection, row: Row[Any], now: datetime, reason: str) -> None:
    if reason != row.reason:
        store.set_fields(conn, row.id, now, reason=reason)


def promote(
    conn: Connection,
    row: Row[Any],
    members: dict[str, Member],
    results: list[GateResult],
    now: datetime,
) -> list[str]:
    last = len(row.waves) - 1
    if row.wave >= last:
        store.set_fields(conn, row.id, now, passed_at=now, last_gates=gate_dicts(results))
        finish(conn, row, members, now)
        return []
    wave = row.wave + 1
    told = assign_through(conn, row, wave, now)
    store.set_fields(
        conn,
        row.id,
        now,
        wave=wave,
        wave_started_at=now,
        reason=f"wave {row.wave + 1} passed; wave {wave + 1} started ({row.waves[wave]} devices)",
        last_gates=gate_dicts(results),
    )
    log.info("rollout %d promoted to wave %d: %d devices told", row.id, wave + 1, len(told))
    return told


def finish(conn: Connection, row: Row[Any], members: dict[str, Member], now: datetime) -> None:
    """After the last wave passed: complete once every device settled, else wait for them."""
    counts = Counter(m.state for m in members.values())
    unsettled = sum(n for state, n in counts.items() if state not in SETTLED_DEVICE_STATES)
    if unsettled:
        deadline = repository.utc(row.deadline_at).isoformat() if row.deadline_at else "none"
        tally = _tally(members, counts)
        reason = f"all waves passed; waiting for {unsettled} devices ({tally}); deadline {deadline}"
        say(conn, row, now, reason)
        return
    reason = f"completed: {_tally(members, counts)}"
    store.set_fields(conn, row.id, now, state=RolloutState.COMPLETED.value, reason=reason)
    log.info("rollout %d %s", row.id, reason)


def fail(
    conn: Connection,
    row: Row[Any],
    gates: Gates,
    results: list[GateResult],
    now: datetime,
) -> list[str]:
    failed = [r for r in results if not r.ok]
    reason = f"wave {row.wave + 1} failed: " + "; ".join(f"{r.gate}: {r.detail}" for r in failed)
    restored: list[str] = []
    if gates.on_failure == "rollback":
        restored = restore_devices(conn, row.id)
        state = RolloutState.ROLLED_BACK
    else:
        state = RolloutState.HALTED
    store.set_fields(conn, row.id, now, state=state.value, reason=reason, last_gates=gate_dicts(results))
    log.warning("rollout %d %s: %s", row.id, state.value, reason)
    return restored
