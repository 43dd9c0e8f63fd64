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

from sqlalchemy import Connection, Engine

from fleet.compat import IncompatibleRuntimeError, RuntimeNote
from fleet.deploy import Publisher
from fleet.errors import ConflictError, FleetError, NotFoundError, StaleLeaderError
from fleet.rollout_spec import (
    ACTIVE_STATES,
    Gates,
    RolloutDeviceView,
    RolloutRequest,
    RolloutState,
    RolloutView,
    wave_sizes,
)
from fleet.rollouts.gates import rollback_gate
from fleet.rollouts.judge import Dev, fail, finish, judge, settle
from fleet.storage import repository
from fleet.storage import rollouts as store
from fleet.storage.compat import record_skipped, screen
from fleet.storage.leases import Fence, check_fence
from fleet.storage.rollout_devices import (
    assign_through,
    device_views,
    restore_devices,
)
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
            assigned = assign_through(conn, row, 0, now)
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

    def devices(self, rollout_id: int) -> list[RolloutDeviceView]:
        """Every targeted device's state in the rollout."""
        with self.engine.begin() as conn:
            if store.get_row(conn, rollout_id) is None:
                raise NotFoundError(f"no rollout {rollout_id}")
            return device_views(conn, rollout_id)

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
            row = store.lock_row(conn, rollout_id)  # a tick on another worker waits, or is waited for
            if row is None:
                raise NotFoundError(f"no rollout {rollout_id}")
            state = RolloutState(row.state)
            if state not in allowed:
                raise ConflictError(f"rollout {rollout_id} is {state.value}; cannot make it {to.value}")
            values: dict[str, object] = {"state": to.value, "reason": reason}
            if restart_soak:
                values["wave_started_at"] = now
            if restore:
                restored = restore_devices(conn, rollout_id)
            store.set_fields(conn, rollout_id, now, **values)
            row = store.get_row(conn, rollout_id)
            assert row is not None
            result = store.view(conn, row)
        log.info("rollout %d: %s -> %s (%s)", rollout_id, state.value, to.value, reason)
        self._notify(restored)
        return result

    # ------------------------------------------------------------ the loop

    def tick(self, fence: Fence | None = None) -> None:
        """Judge every running rollout once. With ``fence`` (the elected worker's token) each
        rollout's judgement is written only while that lease term holds; None: unfenced (a
        single worker, tests)."""
        with self.engine.begin() as conn:
            ids = store.active_ids(conn)
        for rollout_id in ids:
            try:
                self._tick_one(rollout_id, fence)
            except StaleLeaderError as exc:
                log.warning("rollout tick dropped: %s", exc)
                return
            except Exception:
                log.exception("rollout %d: tick failed; trying again next tick", rollout_id)

    def _tick_one(self, rollout_id: int, fence: Fence | None) -> None:
        now = self.clock()
        notify: list[str] = []
        with self._lock, self.engine.begin() as conn:
            if fence is not None:
                check_fence(conn, fence)
            # Locked until the verdict is written: an operator's pause or abort on any worker is
            # applied before this read or after this write, never lost in between.
            row = store.lock_row(conn, rollout_id)
            if row is None or row.state != RolloutState.RUNNING.value:
                return
            gates = Gates.model_validate(row.gates)
            members, notify = settle(conn, row, gates, now)
            failures = [f"{m.device_id}: {m.detail}" for m in members.values() if m.state is Dev.FAILED]
            early = rollback_gate(gates, failures)
            if not early.ok:
                notify += fail(conn, row, gates, [early], now)
            elif row.passed_at is not None:
                finish(conn, row, members, now)
            else:
                notify += judge(conn, row, gates, members, failures, now)
        self._notify(notify)

    def _notify(self, device_ids: list[str]) -> None:
        for device_id in device_ids:
            command = Command(
                command=CommandKind.CHECK_UPDATE, command_id=uuid.uuid4().hex, issued_at=self.clock()
            )
            if not self.publisher.publish(
                self.topics.cmd(device_id), command.model_dump_json().encode(), qos=1
            ):
                log.info("could not notify %s; it will see the change on its next poll", device_id)
