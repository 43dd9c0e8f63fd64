"""What each update state does. A handler returns (OK) or raises (FAIL); the machine routes.

Each handler is built with only what it needs (the runner, the store, the serving holder, the
numbers of the policy it uses) and takes the update's record when it runs. ``handlers`` builds
the table for one run of the machine, from the policy in force when the run began.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import ActivateError, HealthCheckError, StoreError, UpdateError
from agent.serving import ActiveModel, ModelHolder
from agent.store import ActivePointer, ModelStore
from agent.update.machine import Handler, State
from agent.update.policy import DownloadPolicy, UpdatePolicy
from agent.update.probation import ProbationPolicy, judge, summarize
from agent.update.record import SideBySide, UpdateRecord
from agent.update.runner import StepRunner
from agent.update.side_by_side import measure
from agent.usage import ModelUsage
from protocol.bundle import SAMPLES
from protocol.errors import BundleError, EdgefleetError
from protocol.messages import DesiredModel
from protocol.samples import SmokeSamples, read_samples
from runtime import RuntimeChoice

log = logging.getLogger(__name__)

Usage = Callable[[str], ModelUsage]
"""What a model (by bundle sha256) has served in this process."""

_Samples = tuple[SmokeSamples, float]
"""The bundle's recorded samples and the tolerance they are compared with."""

HEALTH_CHECK_SAMPLES = 4
SIDE_BY_SIDE_S = 1.0
"""At most this long (and ``side_by_side.MAX_PAIRS`` pairs) for the side-by-side timing at activation."""


def target_of(record: UpdateRecord) -> DesiredModel:
    if record.target is None:
        raise UpdateError("the update record names no target")
    return record.target


@dataclass(frozen=True)
class ServingLoader:
    """Loads stored models for serving, in this process, with the configured runtime."""

    store: ModelStore
    runtime: RuntimeChoice = "auto"
    threads: int = 1

    def load(self, sha256: str) -> ActiveModel:
        return ActiveModel.load(self.store.read(sha256), runtime=self.runtime, threads=self.threads)

    def load_pointer(self, pointer: ActivePointer) -> ActiveModel | None:
        """The pointer's active model, or its previous one if the active cannot load."""
        for sha in (pointer.active, pointer.previous):
            if sha is None:
                continue
            try:
                return self.load(sha)
            except EdgefleetError as exc:
                log.error("cannot load stored model %s: %s", sha[:12], exc)
        return None


@dataclass
class ActivationMark:
    """What the new model had served when it was swapped in: probation judges only what follows."""

    sha256: str | None = None
    usage: ModelUsage = field(default_factory=ModelUsage)


def kept(store: ModelStore, sha256: str) -> bool:
    """The target is already a complete model in the store (a kept previous one) and no bundle of
    it is being downloaded: the update verifies it from disk instead of downloading it."""
    return store.has(sha256) and not store.download_path(sha256).exists()


@dataclass(frozen=True)
class Download:
    runner: StepRunner
    store: ModelStore
    policy: DownloadPolicy

    def __call__(self, record: UpdateRecord) -> None:
        target = target_of(record)
        if kept(self.store, target.sha256):
            try:
                self.store.read(target.sha256)  # every file against its manifest
            except StoreError as exc:
                log.warning("the kept copy is damaged, downloading it again: %s", exc)
                self.store.remove(target.sha256)
            else:
                log.info("%s %s is still in the store: no download", target.name, target.version)
                return
        dest = self.store.download_path(target.sha256)
        self.runner.download(target, dest, self.policy.attempts, self.policy.retry_base_s)


@dataclass(frozen=True)
class Verify:
    runner: StepRunner
    store: ModelStore

    def __call__(self, record: UpdateRecord) -> None:
        sha256 = target_of(record).sha256
        if kept(self.store, sha256):
            self.runner.verify_stored(sha256)
        else:
            self.runner.verify(self.store.download_path(sha256))


@dataclass(frozen=True)
class Stage:
    runner: StepRunner
    store: ModelStore

    def __call__(self, record: UpdateRecord) -> None:
        target = target_of(record)
        if kept(self.store, target.sha256):
            return  # already extracted, and verified from disk
        self.runner.stage(self.store.download_path(target.sha256), target.sha256)


@dataclass(frozen=True)
class Smoke:
    runner: StepRunner

    def __call__(self, record: UpdateRecord) -> None:
        self.runner.smoke(target_of(record).sha256)


@dataclass(frozen=True)
class Activate:
    """Load the staged model here and swap it in. Reached only after verify and smoke passed for
    this target (see ``TRANSITIONS``), so it is not smoke-tested a second time."""

    store: ModelStore
    holder: ModelHolder
    loader: ServingLoader
    usage: Usage
    mark: ActivationMark
    side_by_side_s: float = SIDE_BY_SIDE_S
    """Time for the two models to take turns before the swap (0: not measured)."""

    def __call__(self, record: UpdateRecord) -> None:
        target = target_of(record)
        try:
            model = self.loader.load(target.sha256)
        except EdgefleetError as exc:
            raise ActivateError(f"cannot load {target.name} {target.version} for serving: {exc}") from exc
        prior = record.prior or ActivePointer()
        # Probation judges what the new model serves from the moment it is swapped in.
        self.mark.sha256, self.mark.usage = target.sha256, self.usage(target.sha256)
        if prior.active is not None:
            before = self.usage(prior.active)
            record.previous_p50_ms = before.recent_p50()
            # Its recent invoke times (the last 1,000-2,000 timed requests), not its whole life.
            recent = before.recent_invoke.merged()
            cpu = before.cpu_per_instance_ms
            record.previous_invoke = summarize(recent, cpu, before.recent_cpu.merged())
            record.side_by_side = self._side_by_side(prior.active, model)
        try:
            self.store.write_pointer(prior.switched_to(target.sha256))
        except OSError as exc:
            raise ActivateError(f"cannot write {self.store.pointer_path}: {exc}") from exc
        self.holder.swap(model)
        log.info("now serving %s %s", model.manifest.name, model.manifest.version)

    def _side_by_side(self, previous_sha: str, model: ActiveModel) -> SideBySide | None:
        """The previous model (still serving) and the new one in turns on their first samples;
        None when it cannot be measured (the previous model is not the serving one, its samples
        are gone): probation then judges the requests alone."""
        previous = self.holder.current
        if self.side_by_side_s <= 0 or previous is None or previous.sha256 != previous_sha:
            return None
        try:
            old_samples = read_samples((self.store.read(previous_sha).path / SAMPLES).read_bytes())
            new_samples = read_samples((self.store.read(model.sha256).path / SAMPLES).read_bytes())
            result = measure(
                lambda: previous.time_first_sample(old_samples),
                lambda: model.time_first_sample(new_samples),
                self.side_by_side_s,
            )
        except (EdgefleetError, OSError) as exc:
            log.warning("side-by-side timing not measured: %s", exc)
            return None
        if result is not None:
            log.info(
                "side by side: CPU time %.3gx the previous model's (%d pairs)", result.cpu_ratio, result.pairs
            )
        return result


@dataclass(frozen=True)
class Probation:
    """Watch the new model while it serves; raise (-> rollback) when it misbehaves."""

    store: ModelStore
    holder: ModelHolder
    usage: Usage
    policy: ProbationPolicy
    mark: ActivationMark
    monotonic: Callable[[], float]
    wait: Callable[[float], None]

    def __call__(self, record: UpdateRecord) -> None:
        policy = self.policy
        target = target_of(record)
        current = self.holder.current
        if current is None or current.sha256 != target.sha256:
            raise HealthCheckError(
                f"probation failed: {target.name} {target.version} is not the serving model"
            )
        # After a restart there is no mark: judge what the model serves from now on.
        start = self.mark.usage if self.mark.sha256 == target.sha256 else self.usage(target.sha256)
        self.mark.sha256 = None
        started = self.monotonic()
        samples = self._samples(target.sha256)
        while True:
            elapsed = self.monotonic() - started
            served = self.usage(target.sha256).minus(start)
            verdict = judge(policy, served, record.previous_invoke, elapsed, record.side_by_side)
            if verdict.failure is not None:
                raise HealthCheckError(verdict.failure)
            if verdict.done:
                log.info(
                    "probation passed: %s (request p50 %s ms, the previous model's %s ms: not judged)",
                    verdict.note,
                    f"{served.latency.percentile(50):.3g}" if served.latency.total else "-",
                    f"{record.previous_p50_ms:.3g}" if record.previous_p50_ms is not None else "-",
                )
                return
            self.wait(min(policy.check_interval_s, max(0.01, policy.duration_s - elapsed)))
            self._health_check(target.sha256, samples)

    def _samples(self, sha256: str) -> tuple[SmokeSamples, float]:
        try:
            stored = self.store.read(sha256)
            return read_samples((stored.path / SAMPLES).read_bytes()), stored.manifest.smoke.atol
        except (StoreError, BundleError, OSError) as exc:
            raise HealthCheckError(f"probation failed: cannot read the model's samples: {exc}") from exc

    def _health_check(self, sha256: str, samples: tuple[SmokeSamples, float]) -> None:
        """The serving model still reproduces its first samples (the interpreter is sane), through
        the same check as the smoke test."""
        model = self.holder.current
        if model is None or model.sha256 != sha256:
            raise HealthCheckError("probation failed: the serving model changed under the update")
        recorded, atol = samples
        try:
            mismatch = model.check_samples(recorded, atol, limit=HEALTH_CHECK_SAMPLES)
        except EdgefleetError as exc:
            raise HealthCheckError(f"probation failed: health check inference failed: {exc}") from exc
        if mismatch is not None:
            raise HealthCheckError(f"probation failed: health check: {mismatch}")


@dataclass(frozen=True)
class Commit:
    """Keep the active model and the ``keep_previous`` newest before it; remove the rest."""

    store: ModelStore
    keep_previous: int

    def __call__(self, record: UpdateRecord) -> None:
        pointer = self.store.read_pointer()
        trimmed = pointer.keeping(self.keep_previous)
        if trimmed != pointer:
            self.store.write_pointer(trimmed)  # before removing: never a pointer to a removed model
        removed = self.store.prune(trimmed.models())
        self.store.clear_downloads()
        if removed:
            log.info("removed old models %s", ", ".join(sha[:12] for sha in removed))
        record.failed_sha256 = None
        record.failed_reason = None
        record.reason = None


@dataclass(frozen=True)
class Rollback:
    """Restore the pointer the update started from and serve its model again (or none)."""

    store: ModelStore
    holder: ModelHolder
    loader: ServingLoader

    def __call__(self, record: UpdateRecord) -> None:
        prior = record.prior if record.prior is not None else self.store.read_pointer()
        self.store.write_pointer(prior)
        current = self.holder.current
        if prior.active is None:
            self.holder.swap(None)
        elif current is None or current.sha256 != prior.active:
            self.holder.swap(self.loader.load_pointer(prior))
        target = record.target
        if target is not None and target.sha256 not in prior.models():
            self.store.remove(target.sha256)
        self.store.clear_downloads()
        serving = self.holder.current
        if prior.active is not None and (serving is None or serving.sha256 != prior.active):
            raise ActivateError(f"could not bring back model {prior.active[:12]}")


def failed(record: UpdateRecord) -> None:
    """Remember the bundle and why: not retried until the desired state names another."""
    record.failed_sha256 = record.target.sha256 if record.target is not None else None
    record.failed_reason = record.reason
    log.error("update failed, still serving the previous model: %s", record.reason)


@dataclass(frozen=True)
class ServingSide:
    """The serving side the handlers act on, fixed for the agent's life."""

    store: ModelStore
    holder: ModelHolder
    loader: ServingLoader
    usage: Usage
    monotonic: Callable[[], float]
    wait: Callable[[float], None]


def handlers(runner: StepRunner, serving: ServingSide, policy: UpdatePolicy) -> dict[State, Handler]:
    """One handler per state that acts (IDLE does not), for one run of the machine."""
    store, holder = serving.store, serving.holder
    mark = ActivationMark()
    return {
        State.DOWNLOAD: Download(runner, store, policy.download),
        State.VERIFY: Verify(runner, store),
        State.STAGE: Stage(runner, store),
        State.SMOKE: Smoke(runner),
        State.ACTIVATE: Activate(store, holder, serving.loader, serving.usage, mark),
        State.PROBATION: Probation(
            store, holder, serving.usage, policy.probation, mark, serving.monotonic, serving.wait
        ),
        State.COMMIT: Commit(store, policy.keep_previous),
        State.ROLLBACK: Rollback(store, holder, serving.loader),
        State.FAILED: failed,
    }
