"""The updater: one update at a time, on the machine, under the policy in force.

It reads the desired state, decides whether to install, and hands the machine (``machine.py``)
the state handlers (``handlers.py``) built for the current ``UpdatePolicy``. ``reload`` swaps
that policy as one value (SIGHUP); the run in progress keeps the one it started with.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agent.config import AgentConfig
from agent.errors import StoreError, UpdateError
from agent.serving import ActiveModel, ModelHolder
from agent.store import ActivePointer, ModelStore
from agent.update.downgrade import DowngradeGuard
from agent.update.faults import NO_FAULTS, Faults
from agent.update.handlers import ServingLoader, ServingSide, Usage, handlers
from agent.update.machine import Interrupted, Machine, State
from agent.update.policy import UpdatePolicy
from agent.update.record import RecordFile, UpdateRecord
from agent.update.runner import StepRunner, interruptible_wait, make_runner
from agent.usage import ModelUsage
from protocol.messages import DesiredModel, DesiredState, UpdateEvent
from protocol.rollback import SignedRollbackGrant
from protocol.schema import ModelRef
from protocol.update_state import FAILED_INSTALL_STATES

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

EventSink = Callable[[UpdateEvent], None]

__all__ = ["EventSink", "Interrupted", "Updater", "build_updater"]


class Updater:
    def __init__(  # noqa: PLR0913 - the engine's collaborators, injected so the fault table can swap each
        self,
        device_id: str,
        runner: StepRunner,
        serving: ServingSide,
        *,
        policy: UpdatePolicy,
        emit: EventSink = lambda event: None,
        stopping: threading.Event,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        faults: Faults = NO_FAULTS,
        guard: DowngradeGuard | None = None,
    ) -> None:
        self.device_id = device_id
        self.guard = guard
        """Refuses a move to an older model without the operator's grant (None: no check)."""
        self._refused: tuple[str, str | None] | None = None
        self.runner = runner
        self.serving = serving
        self.policy = policy
        """Swapped whole by ``reload``; read once at the start of each run of the machine."""
        self.emit = emit
        self.on_desired: Callable[[DesiredState], None] = lambda desired: None
        """Sees every desired state read (the app judges its config section and its capture policy)."""
        self.stopping = stopping
        self.wall = wall
        records = RecordFile(serving.store.root / "update.json")
        self.machine = Machine(records, report=self._report, stopping=stopping, faults=faults)
        self._busy = threading.Lock()
        self._again = threading.Event()

    @property
    def store(self) -> ModelStore:
        return self.serving.store

    @property
    def holder(self) -> ModelHolder:
        return self.serving.holder

    @property
    def record(self) -> UpdateRecord:
        return self.machine.record

    @property
    def state(self) -> State:
        # An unreadable record is rolled back at start-up, before anything serves.
        return self.record.state if self.record.state is not None else State.ROLLBACK

    def reload(self, policy: UpdatePolicy) -> None:
        self.policy = policy

    # -- entry points ------------------------------------------------------------------------
    def start_up(self) -> None:
        """What the agent does before it serves: settle an interrupted update that needs no
        network (an interrupted activation rolls back here), then load the active model."""
        with self._busy:
            self._resume(local_only=True)
        if self.holder.current is None:
            self.holder.swap(self.load_serving(self.store.read_pointer()))

    def resume(self, local_only: bool = False) -> bool:
        """Continue an update the last process left unfinished; return whether anything ran."""
        with self._busy:
            return self._resume(local_only)

    def check(self) -> None:
        """Read the desired state and install it if needed. A check during an update is queued."""
        if not self._busy.acquire(blocking=False):
            self._again.set()
            return
        try:
            while not self.stopping.is_set():
                self._again.clear()
                self._check_once()
                if not self._again.is_set():
                    break
        except Interrupted:
            log.info(
                "update interrupted in state %s by the agent stopping; resumed at the next start", self.state
            )
        finally:
            self._busy.release()

    def install(self, target: DesiredModel) -> None:
        """Install ``target`` now (for tests and tools); ends in IDLE with it or the old model."""
        with self._busy:
            try:
                self._resume(local_only=False)
                self._install(target)
            except Interrupted:
                log.info("update interrupted in state %s by the agent stopping", self.state)

    def load_serving(self, pointer: ActivePointer) -> ActiveModel | None:
        return self.serving.loader.load_pointer(pointer)

    # -- deciding ----------------------------------------------------------------------------
    def _resume(self, local_only: bool) -> bool:
        policy = self.policy
        table = handlers(self.runner, self.serving, policy)
        return self.machine.resume(table, policy.max_state_restarts, local_only=local_only)

    def _check_once(self) -> None:
        self._resume(local_only=False)
        try:
            desired = self.runner.fetch_desired()
        except UpdateError as exc:
            log.warning("%s", exc)
            return
        self.on_desired(desired)
        target = desired.model
        failed = self.record.failed_sha256
        if failed is not None and (target is None or target.sha256 != failed):
            log.info("the desired state changed; forgetting failed bundle %s", failed[:12])
            self.record.failed_sha256 = None
            self.record.failed_reason = None
            self.machine.save()
        if target is None:
            log.debug("no model is desired for this device yet")
            return
        if target.sha256 == self.store.read_pointer().active:
            return
        if target.sha256 == self.record.failed_sha256:
            log.debug("not retrying bundle %s: %s", target.sha256[:12], self.record.failed_reason)
            return
        if self._refuse_downgrade(target, desired.rollback_grant):
            return
        self._install(target)

    def _refuse_downgrade(self, target: DesiredModel, grant: SignedRollbackGrant | None) -> bool:
        """True when the guard refuses ``target``: reported once per (bundle, grant), then quiet."""
        if self.guard is None:
            return False
        pointer = self.store.read_pointer()
        running = self._ref(pointer.active)
        reason = self.guard.refusal(
            target, grant, running=running, previous_sha256=pointer.previous, now=self.wall()
        )
        if reason is None:
            return False
        key = (target.sha256, grant.grant if grant is not None else None)
        if self._refused != key:
            self._refused = key
            log.warning("%s", reason)
            self._emit_refusal(target, running, reason)
        return True

    def _emit_refusal(self, target: DesiredModel, running: ModelRef | None, reason: str) -> None:
        try:
            self.emit(
                UpdateEvent(
                    device_id=self.device_id,
                    ts=self.wall(),
                    update_id=uuid.uuid4().hex,
                    state=State.FAILED,
                    target=ModelRef(name=target.name, version=target.version, sha256=target.sha256),
                    previous=running,
                    ok=False,
                    reason=reason,
                )
            )
        except Exception:
            log.exception("could not publish the refusal of %s %s", target.name, target.version)

    def _install(self, target: DesiredModel) -> None:
        pointer = self.store.read_pointer()
        record = UpdateRecord(
            state=State.IDLE,
            update_id=uuid.uuid4().hex,
            target=target,
            prior=pointer,
            previous_ref=self._ref(pointer.active),
            failed_sha256=self.record.failed_sha256,
            failed_reason=self.record.failed_reason,
        )
        log.info("installing %s %s (bundle %s)", target.name, target.version, target.sha256[:12])
        policy = self.policy
        self.machine.start(record, handlers(self.runner, self.serving, policy), policy.max_state_restarts)

    # -- reporting ---------------------------------------------------------------------------
    def _report(self, state: State, record: UpdateRecord) -> None:
        target = record.target
        if target is None:
            return
        bad = state in FAILED_INSTALL_STATES
        try:
            event = UpdateEvent(
                device_id=self.device_id,
                ts=self.wall(),
                update_id=record.update_id or "unknown",
                state=state,
                target=ModelRef(name=target.name, version=target.version, sha256=target.sha256),
                previous=record.previous_ref,
                ok=not bad,
                reason=record.reason if bad else None,
            )
        except ValidationError as exc:
            log.warning("cannot describe update event for %s: %s", target.name, exc)
            return
        try:
            self.emit(event)
        except Exception:
            log.exception("could not publish update event")

    def _ref(self, sha: str | None) -> ModelRef | None:
        if sha is None:
            return None
        current = self.holder.current
        if current is not None and current.sha256 == sha:
            return current.ref
        try:
            return self.store.read(sha).ref
        except StoreError:
            return None


def build_updater(  # noqa: PLR0913 - the one place that wires config to the engine
    config: AgentConfig,
    store: ModelStore,
    holder: ModelHolder,
    *,
    user_agent: str,
    stopping: threading.Event,
    usage: Usage = lambda sha: ModelUsage(),
    emit: EventSink = lambda event: None,
    session: requests.Session | None = None,
    faults: Faults = NO_FAULTS,
) -> Updater:
    """The updater the agent runs, from its config: the policy, the runner (a worker process per
    step, or this process on ``session``: tests and tools), the configured runtime for serving."""
    serving = ServingSide(
        store=store,
        holder=holder,
        loader=ServingLoader(store, runtime=config.runtime.kind, threads=config.runtime.threads),
        usage=usage,
        monotonic=time.monotonic,
        wait=interruptible_wait(stopping),
    )
    return Updater(
        config.device_id,
        make_runner(config, user_agent=user_agent, stopping=stopping, session=session),
        serving,
        policy=UpdatePolicy.from_config(config.update),
        emit=emit,
        stopping=stopping,
        faults=faults,
        guard=DowngradeGuard(config.device_id, config.trusted_keys, store.versions),
    )
