"""The rollout controller: start rollouts, and on every tick promote, wait, halt or roll back.

The desired state rows are the source of truth; the controller only changes them and then nudges
the affected devices with ``check-update`` (devices that miss it find the change on their next
poll). Time comes from an injected clock, so the soak and gate logic is tested without sleeping.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row

from fleet.compat import IncompatibleRuntimeError, RuntimeNote
from fleet.deploy import Publisher
from fleet.errors import ConflictError, FleetError, NotFoundError
from fleet.rollout_spec import (
    ACTIVE_STATES,
    GateResult,
    Gates,
    RolloutRequest,
    RolloutState,
    RolloutView,
    gate_dicts,
    wave_sizes,
)
from fleet.rollouts.gates import evaluate, ready_to_judge, rollback_gate
from fleet.storage import repository
from fleet.storage import rollouts as store
from fleet.storage.compat import record_skipped, screen
from protocol.messages import Command, CommandKind
from protocol.topics import Topics

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)


def _runtime_fit(
    conn: Connection, request: RolloutRequest, chosen: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[RuntimeNote]]:
    """The targeted devices whose runtime can load the model, and the skipped ones (409: none can)."""
    allowed, skipped, _unchecked = screen(conn, request.name, request.version, [d for d, _ in chosen])
    if not allowed:
        why = "; ".join(f"{s.device_id}: {s.reason}" for s in skipped[:3])
        raise IncompatibleRuntimeError(
            f"no targeted device can run {request.name} {request.version} ({len(skipped)} skipped): {why}"
        )
    keep = set(allowed)
    return [item for item in chosen if item[0] in keep], skipped


class RolloutController:
    def __init__(
        self, engine: Engine, publisher: Publisher, topics: Topics, clock: Clock = wall_clock
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.topics = topics
        self.clock = clock
        self._lock = threading.Lock()
        """One tick or operator action at a time: they read, decide and write the same rows."""

    # ------------------------------------------------------------ operator actions

    def start(self, request: RolloutRequest, created_by: str | None = None) -> RolloutView:
        now = self.clock()
        with self._lock, self.engine.begin() as conn:
            if repository.get_model(conn, request.name, request.version) is None:
                raise NotFoundError(
                    f"no model {request.name} {request.version} in the registry; push it first"
                )
            chosen = store.resolve_target(conn, request.target)
            if request.target.devices:
                unknown = sorted(set(request.target.devices) - {d for d, _ in chosen})
                if unknown:
                    raise NotFoundError(f"unknown device(s) (or revoked): {', '.join(unknown)}")
            if not chosen:
                raise FleetError("the target selects no known device")
            chosen, skipped = _runtime_fit(conn, request, chosen)
            busy = store.busy_devices(conn, [d for d, _ in chosen])
            if busy:
                first = sorted(busy)[0]
                raise ConflictError(
                    f"{len(busy)} targeted device(s) are already in an active rollout "
                    f"(e.g. {first} in rollout {busy[first]}): pause is not enough, abort it first"
                )
            ordered = store.canary_order(f"{request.name}/{request.version}", chosen)
            sizes = wave_sizes(request.waves, len(ordered))
            rollout_id = store.create_rollout(
                conn, request, ordered=ordered, sizes=sizes, now=now, created_by=created_by
            )
            record_skipped(conn, rollout_id, skipped)
            row = store.get_row(conn, rollout_id)
            assert row is not None
            assigned = store.assign_through(conn, row, 0, now)
            store.set_fields(conn, rollout_id, now, wave_started_at=now)
            row = store.get_row(conn, rollout_id)
            assert row is not None
            result = store.view(conn, row)
        log.info(
            "rollout %d of %s %s started: %d devices in waves %s, %d skipped (runtime)",
            rollout_id,
            request.name,
            request.version,
            len(ordered),
            sizes,
            len(skipped),
        )
        self._notify(assigned)
        return result

    def get(self, rollout_id: int) -> RolloutView:
        with self.engine.begin() as conn:
            row = store.get_row(conn, rollout_id)
            if row is None:
                raise NotFoundError(f"no rollout {rollout_id}")
            return store.view(conn, row)

    def all(self) -> list[RolloutView]:
        with self.engine.begin() as conn:
            return store.list_views(conn)

    def pause(self, rollout_id: int, reason: str | None = None) -> RolloutView:
        return self._transition(rollout_id, {RolloutState.RUNNING}, RolloutState.PAUSED, reason or "paused")

    def resume(self, rollout_id: int, reason: str | None = None) -> RolloutView:
        """Running again; the current wave's soak starts over."""
        return self._transition(
            rollout_id, {RolloutState.PAUSED}, RolloutState.RUNNING, reason or "resumed", restart_soak=True
        )

    def abort(self, rollout_id: int, reason: str | None = None) -> RolloutView:
        """Stop where it is: no further waves; devices keep what they were given."""
        return self._transition(rollout_id, set(ACTIVE_STATES), RolloutState.ABORTED, reason or "aborted")

    def rollback(self, rollout_id: int, reason: str | None = None) -> RolloutView:
        """Give every device the rollout reached its previous assignment back, and stop."""
        allowed = {*ACTIVE_STATES, RolloutState.HALTED, RolloutState.ABORTED, RolloutState.COMPLETED}
        return self._transition(
            rollout_id,
            allowed,
            RolloutState.ROLLED_BACK,
            reason or "rolled back by an operator",
            restore=True,
        )

    def _transition(
        self,
        rollout_id: int,
        allowed: set[RolloutState],
        to: RolloutState,
        reason: str,
        *,
        restart_soak: bool = False,
        restore: bool = False,
    ) -> RolloutView:
        now = self.clock()
        restored: list[str] = []
        with self._lock, self.engine.begin() as conn:
            row = store.get_row(conn, rollout_id)
            if row is None:
                raise NotFoundError(f"no rollout {rollout_id}")
            state = RolloutState(row.state)
            if state not in allowed:
                raise ConflictError(f"rollout {rollout_id} is {state.value}; cannot make it {to.value}")
            values: dict[str, object] = {"state": to.value, "reason": reason}
            if restart_soak:
                values["wave_started_at"] = now
            if restore:
                restored = store.restore(conn, rollout_id)
            store.set_fields(conn, rollout_id, now, **values)
            row = store.get_row(conn, rollout_id)
            assert row is not None
            result = store.view(conn, row)
        log.info("rollout %d: %s -> %s (%s)", rollout_id, state.value, to.value, reason)
        self._notify(restored)
        return result

    # ------------------------------------------------------------ the loop

    def tick(self) -> None:
        """Judge every running rollout once."""
        with self.engine.begin() as conn:
            ids = store.active_ids(conn)
        for rollout_id in ids:
            try:
                self._tick_one(rollout_id)
            except Exception:
                log.exception("rollout %d: tick failed; trying again next tick", rollout_id)

    def _tick_one(self, rollout_id: int) -> None:
        now = self.clock()
        notify: list[str] = []
        with self._lock, self.engine.begin() as conn:
            row = store.get_row(conn, rollout_id)
            if row is None or row.state != RolloutState.RUNNING.value:
                return
            gates = Gates.model_validate(row.gates)
            health = store.wave_health(conn, row)
            started = repository.utc(row.wave_started_at)
            elapsed = (now - started).total_seconds()
            early = rollback_gate(gates, health)
            if not early.ok:
                notify = self._fail(conn, row, gates, [early], now)
            elif elapsed < gates.soak_s:
                store.set_fields(
                    conn,
                    rollout_id,
                    now,
                    reason=f"wave {row.wave + 1} soaking ({elapsed:.0f}/{gates.soak_s:.0f} s)",
                )
            elif (waiting := ready_to_judge(health)) is not None:
                if elapsed >= gates.install_timeout_s:
                    detail = f"after {elapsed:.0f} s only {waiting}"
                    notify = self._fail(conn, row, gates, [], now, detail=detail)
                else:
                    store.set_fields(conn, rollout_id, now, reason=f"wave {row.wave + 1} waiting: {waiting}")
            else:
                results = evaluate(gates, health)
                if all(result.ok for result in results):
                    notify = self._promote(conn, row, results, now)
                else:
                    notify = self._fail(conn, row, gates, results, now)
        self._notify(notify)

    def _promote(
        self, conn: Connection, row: Row[Any], results: list[GateResult], now: datetime
    ) -> list[str]:
        last = len(row.waves) - 1
        if row.wave >= last:
            store.set_fields(
                conn,
                row.id,
                now,
                state=RolloutState.COMPLETED.value,
                reason=f"all {row.waves[-1]} devices passed the gates",
                last_gates=gate_dicts(results),
            )
            log.info("rollout %d completed", row.id)
            return []
        wave = row.wave + 1
        assigned = store.assign_through(conn, row, wave, now)
        store.set_fields(
            conn,
            row.id,
            now,
            wave=wave,
            wave_started_at=now,
            reason=f"wave {row.wave + 1} passed; wave {wave + 1} started ({row.waves[wave]} devices)",
            last_gates=gate_dicts(results),
        )
        log.info("rollout %d promoted to wave %d: %d more devices", row.id, wave + 1, len(assigned))
        return assigned

    def _fail(
        self,
        conn: Connection,
        row: Row[Any],
        gates: Gates,
        results: list[GateResult],
        now: datetime,
        *,
        detail: str = "",
    ) -> list[str]:
        failed = [r for r in results if not r.ok]
        why = detail or "; ".join(f"{r.gate} {r.detail} (limit {r.limit})" for r in failed)
        reason = f"wave {row.wave + 1} failed: {why}"
        restored: list[str] = []
        if gates.on_failure == "rollback":
            restored = store.restore(conn, row.id)
            state = RolloutState.ROLLED_BACK
        else:
            state = RolloutState.HALTED
        store.set_fields(conn, row.id, now, state=state.value, reason=reason, last_gates=gate_dicts(results))
        log.warning("rollout %d %s: %s", row.id, state.value, reason)
        return restored

    def _notify(self, device_ids: list[str]) -> None:
        for device_id in device_ids:
            command = Command(
                command=CommandKind.CHECK_UPDATE, command_id=uuid.uuid4().hex, issued_at=self.clock()
            )
            if not self.publisher.publish(
                self.topics.cmd(device_id), command.model_dump_json().encode(), qos=1
            ):
                log.info("could not notify %s; it will see the change on its next poll", device_id)
