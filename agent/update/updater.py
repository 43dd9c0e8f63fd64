"""Runs the update state machine: one update at a time, every state saved before it acts."""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from agent.errors import ActivateError, HealthCheckError, StoreError, UpdateError
from agent.runtime import RuntimeChoice
from agent.serving import ActiveModel, ModelHolder
from agent.store import ActivePointer, ModelStore
from agent.telemetry import ModelUsage
from agent.update.machine import NETWORK_STATES, RESUME, RESUME_DEFAULT, TRANSITIONS, Event, State
from agent.update.probation import ProbationPolicy, judge
from agent.update.record import RecordFile, UpdateRecord
from agent.update.runner import InProcessRunner, Interrupted, StepRunner
from agent.update.smoke import smoke
from protocol.errors import EdgefleetError
from protocol.messages import DesiredModel, UpdateEvent
from protocol.schema import ModelRef

if TYPE_CHECKING:
    import requests

    from protocol.signing import TrustedKeys

log = logging.getLogger(__name__)

EventSink = Callable[[UpdateEvent], None]


_Samples = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]


__all__ = ["Interrupted", "Updater"]


class Updater:
    def __init__(
        self,
        device_id: str,
        store: ModelStore,
        holder: ModelHolder,
        *,
        trusted: TrustedKeys | None = None,
        session: requests.Session | None = None,
        fleet_url: str,
        runtime: RuntimeChoice = "auto",
        threads: int = 1,
        timeout_s: float = 30.0,
        max_state_restarts: int = 3,
        emit: EventSink = lambda event: None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        probation: ProbationPolicy | None = None,
        usage: Callable[[str], ModelUsage] = lambda sha: ModelUsage(),
        download_attempts: int = 5,
        retry_base_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        stopping: threading.Event | None = None,
        hang_in: State | None = None,
        runner: StepRunner | None = None,
    ) -> None:
        self.device_id = device_id
        self.store = store
        self.holder = holder
        self.trusted = trusted
        self.session = session
        self.fleet_url = fleet_url
        self.runtime: RuntimeChoice = runtime
        self.threads = threads
        self.timeout_s = timeout_s
        self.max_state_restarts = max_state_restarts
        self.emit = emit
        self.wall = wall
        self.probation = probation or ProbationPolicy()
        self.usage = usage
        self.download_attempts = download_attempts
        self.retry_base_s = retry_base_s
        self.monotonic = monotonic
        self.stopping = stopping or threading.Event()
        self.hang_in = hang_in
        """Fault injection for tests: hang after saving this state, until stopped (or killed)."""
        if runner is None:
            if session is None or trusted is None:
                raise ValueError("an Updater needs a runner, or a session and trusted keys")
            runner = InProcessRunner(
                session=session,
                fleet_url=fleet_url,
                device_id=device_id,
                trusted=trusted,
                store=store,
                runtime=runtime,
                threads=threads,
                timeout_s=timeout_s,
                wait=self._wait,
            )
        self.runner = runner
        self.records = RecordFile(store.root / "update.json")
        self.record = self.records.load()
        self._busy = threading.Lock()
        self._again = threading.Event()
        self._staged: ActiveModel | None = None
        self._pre_entered: State | None = None
        self._usage_at_activation: tuple[str, ModelUsage] | None = None
        self._handlers: dict[State, Callable[[], None]] = {
            State.DOWNLOAD: self._download,
            State.VERIFY: self._verify,
            State.STAGE: self._stage,
            State.SMOKE: self._smoke,
            State.ACTIVATE: self._activate,
            State.PROBATION: self._probation,
            State.COMMIT: self._commit,
            State.ROLLBACK: self._rollback,
            State.FAILED: self._failed,
        }

    @property
    def state(self) -> str:
        return self.record.state

    # -- entry points ------------------------------------------------------------------------
    def resume(self, local_only: bool = False) -> bool:
        """Continue an update the last process left unfinished; return whether anything ran.

        ``local_only`` (the start-up path) leaves states that may wait on the network for the
        first scheduled check.
        """
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

    def _check_once(self) -> None:
        self._resume(local_only=False)
        try:
            desired = self.runner.fetch_desired()
        except UpdateError as exc:
            log.warning("%s", exc)
            return
        target = desired.model
        failed = self.record.failed_sha256
        if target is None or target.sha256 != failed:
            if failed is not None:
                log.info("the desired state changed; forgetting failed bundle %s", failed[:12])
            self._forget_failure()
        if target is None:
            log.debug("no model is desired for this device yet")
            return
        if target.sha256 == self.store.read_pointer().active:
            return
        if target.sha256 == self.record.failed_sha256:
            log.debug("not retrying bundle %s: %s", target.sha256[:12], self.record.failed_reason)
            return
        self._install(target)

    def install(self, target: DesiredModel) -> None:
        """Install ``target`` now (for tests and tools); ends in IDLE with it or the old model."""
        with self._busy:
            try:
                self._resume(local_only=False)
                self._install(target)
            except Interrupted:
                log.info("update interrupted in state %s by the agent stopping", self.state)

    # -- the machine -------------------------------------------------------------------------
    def _resume(self, local_only: bool) -> bool:
        try:
            saved = State(self.record.state)
        except ValueError:
            saved = None
        if saved is State.IDLE:
            return False
        resume = RESUME.get(saved, RESUME_DEFAULT) if saved is not None else RESUME_DEFAULT
        if local_only and resume in NETWORK_STATES:
            if resume is State.PROBATION:
                # Count the restart now: a model that kills the process at once is caught here.
                self._enter(State.PROBATION)
                if self.record.state_saves > self.max_state_restarts:
                    self._pre_entered = State.PROBATION
                    self._run(State.PROBATION)
                    return True
                self._pre_entered = State.PROBATION
            log.info("an update was interrupted in %s; it continues at the first check", saved)
            return False
        log.warning("an update was interrupted in state %s; resuming in %s", self.record.state, resume)
        self._run(resume)
        return True

    def _install(self, target: DesiredModel) -> None:
        pointer = self.store.read_pointer()
        previous_ref = self._ref(pointer.active)
        self.record = UpdateRecord(
            state=State.IDLE,
            update_id=uuid.uuid4().hex,
            target=target,
            prior=pointer,
            previous_ref=previous_ref,
            failed_sha256=self.record.failed_sha256,
            failed_reason=self.record.failed_reason,
        )
        log.info("installing %s %s (bundle %s)", target.name, target.version, target.sha256[:12])
        self._run(TRANSITIONS[(State.IDLE, Event.START)])

    def _run(self, state: State) -> None:
        while state is not State.IDLE:
            if self._pre_entered is state:
                self._pre_entered = None  # saved (and counted) at start-up already
            else:
                self._enter(state)
            if state is self.hang_in:
                log.warning("fault injection: hanging in state %s until the process stops", state)
                self.stopping.wait()
                raise Interrupted
            if self.record.state_saves > self.max_state_restarts:
                event = Event.FAIL
                reason = (
                    f"gave up after {self.record.state_saves - 1} restarts in state {state} "
                    "(the agent kept dying there)"
                )
                log.error("%s", reason)
                self._set_reason(state, reason)
            else:
                event = self._act(state)
            state = TRANSITIONS[(state, event)]
        self._enter(State.IDLE)

    def _act(self, state: State) -> Event:
        try:
            self._handlers[state]()
        except Interrupted:
            raise
        except EdgefleetError as exc:
            self._set_reason(state, str(exc))
            log.error("update %s failed: %s", state, exc)
            return Event.FAIL
        except Exception as exc:
            self._set_reason(state, f"unexpected {type(exc).__name__}: {exc}")
            log.exception("update %s failed unexpectedly", state)
            return Event.FAIL
        return Event.OK

    def _set_reason(self, state: State, reason: str) -> None:
        if state in (State.ROLLBACK, State.FAILED) and self.record.reason:
            self.record.reason = f"{self.record.reason}; then {state} failed: {reason}"
        else:
            self.record.reason = reason

    def _enter(self, state: State) -> None:
        """Save the state before acting in it, counting repeated saves, and report it."""
        if self.record.state == state:
            self.record.state_saves += 1
        else:
            self.record.state = state
            self.record.state_saves = 1
        self.records.save(self.record)
        if state is not State.IDLE:
            self._emit(state)

    def _emit(self, state: State) -> None:
        target = self.record.target
        if target is None:
            return
        bad = state in (State.ROLLBACK, State.FAILED)
        try:
            ref = ModelRef(name=target.name, version=target.version, sha256=target.sha256)
            event = UpdateEvent(
                device_id=self.device_id,
                ts=self.wall(),
                update_id=self.record.update_id or "unknown",
                state=state.value,
                target=ref,
                previous=self.record.previous_ref,
                ok=not bad,
                reason=self.record.reason if bad else None,
            )
        except ValidationError as exc:
            log.warning("cannot describe update event for %s: %s", target.name, exc)
            return
        try:
            self.emit(event)
        except Exception:
            log.exception("could not publish update event")

    # -- the steps ---------------------------------------------------------------------------
    def _target(self) -> DesiredModel:
        if self.record.target is None:
            raise UpdateError("the update record names no target")
        return self.record.target

    def _download(self) -> None:
        target = self._target()
        self.runner.download(
            target, self.store.download_path(target.sha256), self.download_attempts, self.retry_base_s
        )

    def _wait(self, seconds: float) -> None:
        """Sleep, unless the agent is stopping (then leave the state for the next start)."""
        if self.stopping.wait(seconds):
            raise Interrupted

    def _verify(self) -> None:
        self.runner.verify(self.store.download_path(self._target().sha256))

    def _stage(self) -> None:
        target = self._target()
        self.runner.stage(self.store.download_path(target.sha256), target.sha256)

    def _smoke(self) -> None:
        self._staged = self.runner.smoke(self._target().sha256)

    def _activate(self) -> None:
        target = self._target()
        model, self._staged = self._staged, None
        if model is None or model.sha256 != target.sha256:
            # Loaded here for serving (the worker's smoke test ran in another process).
            model = smoke(self.store, target.sha256, self.runtime, self.threads)
        prior = self.record.prior or ActivePointer()
        # Probation judges what the new model serves from the moment it is swapped in.
        self._usage_at_activation = (target.sha256, self.usage(target.sha256))
        if prior.active is not None:
            self.record.previous_p50_ms = self.usage(prior.active).recent_p50()
        try:
            self.store.write_pointer(ActivePointer(active=target.sha256, previous=prior.active))
        except OSError as exc:
            raise ActivateError(f"cannot write {self.store.pointer_path}: {exc}") from exc
        self.holder.swap(model)
        log.info("now serving %s %s", model.manifest.name, model.manifest.version)

    def _probation(self) -> None:
        """Watch the new model while it serves; raise (-> rollback) when it misbehaves."""
        policy = self.probation
        target = self._target()
        current = self.holder.current
        if current is None or current.sha256 != target.sha256:
            raise HealthCheckError(
                f"probation failed: {target.name} {target.version} is not the serving model"
            )
        base = self._usage_at_activation
        start_usage = base[1] if base is not None and base[0] == target.sha256 else self.usage(target.sha256)
        self._usage_at_activation = None
        started = self.monotonic()
        samples = self._samples(target.sha256)
        while True:
            elapsed = self.monotonic() - started
            verdict = judge(
                policy, self.usage(target.sha256).minus(start_usage), self.record.previous_p50_ms, elapsed
            )
            if verdict.failure is not None:
                raise HealthCheckError(verdict.failure)
            if verdict.done:
                return
            self._wait(min(policy.check_interval_s, max(0.01, policy.duration_s - elapsed)))
            self._health_check(target.sha256, samples)

    def _samples(self, sha256: str) -> _Samples | None:
        try:
            stored = self.store.read(sha256)
            with np.load(io.BytesIO((stored.path / "samples.npz").read_bytes())) as data:
                return (
                    np.asarray(data["x"], np.float32),
                    np.asarray(data["y"], np.float32),
                    stored.manifest.smoke.atol,
                )
        except (StoreError, OSError, KeyError, ValueError) as exc:
            raise HealthCheckError(f"probation failed: cannot read the model's samples: {exc}") from exc

    def _health_check(self, sha256: str, samples: _Samples | None) -> None:
        """The serving model still reproduces its samples (the interpreter is sane)."""
        model = self.holder.current
        if model is None or model.sha256 != sha256:
            raise HealthCheckError("probation failed: the serving model changed under the update")
        if samples is None:
            return
        x, y, atol = samples
        try:
            outputs = model.predict(x[:4]).outputs
        except EdgefleetError as exc:
            raise HealthCheckError(f"probation failed: health check inference failed: {exc}") from exc
        worst = float(np.max(np.abs(outputs - y[:4]))) if outputs.shape == y[:4].shape else float("inf")
        if not np.isfinite(worst) or worst > atol:
            raise HealthCheckError(
                f"probation failed: health check outputs differ from the recorded ones by {worst:.4g} "
                f"(allowed {atol:g})"
            )

    def _commit(self) -> None:
        pointer = self.store.read_pointer()
        keep = {sha for sha in (pointer.active, pointer.previous) if sha}
        removed = self.store.prune(keep)
        self.store.clear_downloads()
        if removed:
            log.info("removed old models %s", ", ".join(sha[:12] for sha in removed))
        self.record.failed_sha256 = None
        self.record.failed_reason = None
        self.record.reason = None

    def _rollback(self) -> None:
        """Restore the pointer the update started from and serve its model again (or none)."""
        self._staged = None
        prior = self.record.prior if self.record.prior is not None else self.store.read_pointer()
        self.store.write_pointer(prior)
        current = self.holder.current
        if prior.active is None:
            self.holder.swap(None)
        elif current is None or current.sha256 != prior.active:
            self.holder.swap(self.load_serving(prior))
        target = self.record.target
        if target is not None and target.sha256 not in (prior.active, prior.previous):
            self.store.remove(target.sha256)
        self.store.clear_downloads()
        if prior.active is not None and (
            self.holder.current is None or self.holder.current.sha256 != prior.active
        ):
            raise ActivateError(f"could not bring back model {prior.active[:12]}")

    def _failed(self) -> None:
        target = self.record.target
        self.record.failed_sha256 = target.sha256 if target is not None else None
        self.record.failed_reason = self.record.reason
        log.error("update failed, still serving the previous model: %s", self.record.reason)

    def _forget_failure(self) -> None:
        if self.record.failed_sha256 is not None:
            self.record.failed_sha256 = None
            self.record.failed_reason = None
            self.records.save(self.record)

    # -- helpers -----------------------------------------------------------------------------
    def load_serving(self, pointer: ActivePointer) -> ActiveModel | None:
        """Load the pointer's active model, or its previous one if the active cannot load."""
        for sha in (pointer.active, pointer.previous):
            if sha is None:
                continue
            try:
                return ActiveModel.load(self.store.read(sha), runtime=self.runtime, threads=self.threads)
            except EdgefleetError as exc:
                log.error("cannot load stored model %s: %s", sha[:12], exc)
        return None

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
