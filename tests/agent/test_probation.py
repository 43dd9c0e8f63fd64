"""Probation judges the model's own invoke time, not the queue; kept models make rollback a switch.

The judge's rules on recorded figures, the serving path's invoke timer on a real TFLite model, and
the real updater against the stand-in fleet: a fleet-directed rollback to a kept model downloads
nothing, and older models are pruned beyond ``[update] keep_previous``.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.serving import ActiveModel, PredictResult
from agent.store import ActivePointer, ModelStore
from agent.telemetry import RequestMetrics
from agent.update import State
from agent.update.probation import ProbationPolicy, Verdict, judge, summarize
from agent.update.record import InvokeSummary
from agent.usage import ModelUsage
from protocol.bundle import MODEL, read_bundle
from protocol.messages import UpdateEvent
from protocol.signing import load_private_key
from tests.agent.bundles import build_bundle
from tests.agent.peer import FleetPeer
from tests.support.agent import DEVICE, Bundles, stage_directly
from tests.support.updater import build_updater, serving
from tests.support.wait import wait_until

POLICY = ProbationPolicy(
    duration_s=60, min_requests=20, max_error_rate=0.05, max_latency_factor=2, min_invokes=200
)


def served(
    count: int, invoke_ms: float, latency_ms: float, *, seed: int, spread: float = 0.3, errors: int = 0
) -> ModelUsage:
    """What a model served: ``count`` requests whose invoke times scatter (lognormal, ``spread``)
    around ``invoke_ms`` and whose request latencies scatter around ``latency_ms``."""
    rng = np.random.default_rng(seed)
    usage = ModelUsage()
    for invoke, latency in zip(
        invoke_ms * rng.lognormal(0, spread, count), latency_ms * rng.lognormal(0, spread, count), strict=True
    ):
        usage.record(float(latency), float(invoke), float(invoke) * 0.9)
    usage.requests += errors
    usage.errors += errors
    return usage


def previous_of(usage: ModelUsage) -> InvokeSummary | None:
    """What activation saves of the previous model (``agent.update.handlers``)."""
    return summarize(usage.recent_invoke.merged(), usage.cpu_per_instance_ms, usage.recent_cpu.merged())


def verdict(new: ModelUsage, old: ModelUsage, elapsed_s: float = 61) -> Verdict:
    return judge(POLICY, new, previous_of(old), elapsed_s)


def test_doubled_load_with_the_same_model_is_no_rollback() -> None:
    """The request p50 grows 12x with the queue (the old rule failed this); the invoke time, a
    little higher on a busier CPU, is the model's own and passes."""
    before = served(1500, 0.05, 0.56, seed=1)
    during = served(1200, 0.06, 7.08, seed=2)
    assert during.latency.percentile(50) > 3 * (before.recent_p50() or 0)  # the old rule: rollback
    result = verdict(during, before)
    assert result.done and result.failure is None
    assert result.note is not None and "within 2x" in result.note and "1200 requests" in result.note


@pytest.mark.parametrize("seed", range(5))
def test_a_model_three_times_slower_in_invoke_is_rolled_back(seed: int) -> None:
    before = served(1500, 0.05, 0.56, seed=10 + seed)
    during = served(300, 0.15, 0.9, seed=20 + seed)
    result = verdict(during, before)
    assert result.failure is not None, result
    assert "median invoke time" in result.failure  # shown; the 10th percentiles are judged
    assert "invoke time p10 and CPU time p10 more than 2x slower" in result.failure


def test_interference_in_the_previous_sample_does_not_hide_a_slower_model() -> None:
    """Preemption, GIL waits and cold caches only add time, and come and go with the machine's
    load: the previous model measured on a busy machine (60% of its invokes 2.5x longer) against a
    model 3x slower measured on a quiet one reads 1.2x on medians (the median rule passes it),
    3x at the fast end (rolled back)."""
    rng = np.random.default_rng(30)
    before = ModelUsage()
    for invoke in 0.05 * rng.lognormal(0, 0.05, 1500):
        slowed = invoke * (2.5 if rng.random() < 0.6 else 1.0)
        before.record(0.5, float(slowed), float(slowed) * 0.9)
    during = served(600, 0.15, 0.9, seed=31, spread=0.05)
    saved = previous_of(before)
    assert saved is not None
    medians_only = InvokeSummary.model_validate(
        saved.model_dump(include={"count", "median_ms", "low_ms", "high_ms", "cpu_ms"})
    )
    assert judge(POLICY, during, medians_only, 61).failure is None
    result = verdict(during, before)
    assert result.failure is not None and "invoke time p10" in result.failure, result


def test_a_previous_summary_without_percentiles_is_judged_on_medians() -> None:
    """A record saved by an agent before the upgrade (no 10th percentile): the medians decide."""
    before = served(1500, 0.05, 0.56, seed=32)
    saved = previous_of(before)
    assert saved is not None
    older = InvokeSummary.model_validate(
        saved.model_dump(include={"count", "median_ms", "low_ms", "high_ms", "cpu_ms"})
    )
    slow = judge(POLICY, served(300, 0.15, 0.9, seed=33), older, 61)
    assert slow.failure is not None and "median invoke time more than 2x slower" in slow.failure
    fine = judge(POLICY, served(300, 0.06, 0.9, seed=34), older, 61)
    assert fine.failure is None and fine.note is not None and "within 2x" in fine.note


def test_too_few_samples_give_no_latency_verdict() -> None:
    before = served(1500, 0.05, 0.56, seed=3)
    ten_times_slower = served(150, 0.5, 5.0, seed=4)
    result = verdict(ten_times_slower, before)
    assert result == Verdict(
        True, note="invoke time not judged: the new model served 150 timed requests, 200 needed"
    )
    quiet_before = served(120, 0.05, 0.56, seed=5)
    result = verdict(served(400, 0.5, 5.0, seed=6), quiet_before)
    assert result.failure is None and result.note is not None
    assert "the previous model has 120 timed requests in this process, 200 needed" in result.note
    no_previous = judge(POLICY, served(400, 0.5, 5.0, seed=7), None, 61)
    assert no_previous.failure is None and "previous model has 0 timed requests" in (no_previous.note or "")


def test_errors_are_judged_at_once_and_speed_at_the_end() -> None:
    before = served(1500, 0.05, 0.56, seed=8)
    assert verdict(served(10, 0.05, 0.5, seed=9, errors=5), before, 1).done is False  # too few requests
    failing = verdict(served(90, 0.05, 0.5, seed=9, errors=10), before, 1)
    assert failing.failure is not None and "10 of 100 requests failed in inference" in failing.failure
    slow = served(400, 0.5, 5.0, seed=10)
    assert verdict(slow, before, 1).done is False  # speed: judged when probation ends
    assert verdict(slow, before, 61).failure is not None
    by_count = ProbationPolicy(duration_s=600, requests=50, min_invokes=10)
    early = judge(by_count, served(50, 0.05, 0.5, seed=11), previous_of(before), 1)  # type: ignore[arg-type]
    assert early.done and early.failure is None


def test_the_median_bounds_hold_the_median_and_narrow_with_the_sample() -> None:
    narrow = summarize(served(20000, 0.05, 0.5, seed=12, spread=1.0).invoke)
    wide = summarize(served(200, 0.05, 0.5, seed=12, spread=1.0).invoke)
    assert narrow is not None and wide is not None
    for summary in (narrow, wide):
        assert summary.low_ms <= 0.05 <= summary.high_ms
        assert summary.low_ms <= summary.median_ms <= summary.high_ms
    assert narrow.high_ms / narrow.low_ms < wide.high_ms / wide.low_ms
    assert summarize(ModelUsage().invoke) is None


def test_the_previous_models_figures_are_its_recent_ones() -> None:
    """Probation compares with the old model of late, not its whole life."""
    usage = ModelUsage()
    for _ in range(5000):
        usage.record(0.1, 0.01)  # a quiet morning
    for _ in range(1500):
        usage.record(2.0, 0.04)  # then the load arrived (and a warm-up ended)
    recent = usage.recent_p50()
    assert recent is not None and 1.8 <= recent <= 2.3
    assert usage.latency.percentile(50) < 0.2
    previous = summarize(usage.recent_invoke.merged())
    assert previous is not None and previous.count == 1500 and 0.035 <= previous.median_ms <= 0.045
    assert ModelUsage().recent_p50() is None
    since = usage.copy()
    usage.record(3.0, 0.5)
    diff = usage.minus(since)
    assert (diff.requests, diff.timed, diff.invoke.total) == (1, 1, 1)


def test_the_pointer_keeps_the_newest_previous_models() -> None:
    a, b, c, d = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    pointer = ActivePointer().switched_to(a).switched_to(b).switched_to(c).switched_to(d)
    assert pointer == ActivePointer(active=d, previous=c, older=(b, a))
    assert pointer.keeping(1) == ActivePointer(active=d, previous=c)
    assert pointer.keeping(0) == ActivePointer(active=d)
    assert pointer.switched_to(b) == ActivePointer(active=b, previous=d, older=(c, a))  # a rollback
    assert ActivePointer.model_validate_json(b'{"active": null, "previous": null}') == ActivePointer()


def test_the_invoke_timer_leaves_out_the_wait_for_the_interpreter(
    tmp_path: Path, trusted_dir: Path, bundles: Bundles
) -> None:
    sha = stage_directly(tmp_path / "state", bundles.v1, trusted_dir)
    model = ActiveModel.load(ModelStore(tmp_path / "state").read(sha), runtime="tflite-runtime")
    one = bundles.samples_x[:1]
    warm = model.predict(one)
    assert warm.invoke_ms is not None and warm.cpu_ms is not None and warm.invoke_ms < 50
    batch = model.predict(bundles.samples_x[:8])
    assert batch.invoke_ms is not None and batch.invoke_ms < 50  # per instance

    results: list[tuple[float, PredictResult]] = []
    with model.turn:  # another request holds the interpreter for 200 ms

        def request() -> None:
            result = model.predict(one)
            results.append((time.perf_counter(), result))

        worker = threading.Thread(target=request)
        started = time.perf_counter()
        worker.start()
        time.sleep(0.2)
    worker.join()
    finished, queued = results[0]
    assert finished - started >= 0.2  # the request waited its turn ...
    assert queued.invoke_ms is not None and queued.invoke_ms < 50  # ... and its invoke time does not show it


def test_probation_through_the_updater_judges_invoke_time(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    """What the serving side records reaches the judge: request latency far above the old model's
    is not judged, an invoke time 10x the old model's rolls back."""
    state = tmp_path / "state"
    v1 = stage_directly(state, bundles.v1, trusted_dir)
    events: list[UpdateEvent] = []
    metrics = RequestMetrics()
    policy = {"probation_s": 3, "health_check_interval_s": 0.05, "probation_min_invokes": 50}
    updater = build_updater(state, trusted_dir, fleet_peer.url, events, metrics=metrics, update=policy)
    for _ in range(100):
        metrics.record_success(0.5, v1, invoke_ms=0.05, cpu_ms=0.05)
    v2 = fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")

    def requests_on_probation() -> None:
        wait_until(lambda: updater.state is State.PROBATION, "the update to reach probation", 60, 0.005)
        for _ in range(100):
            metrics.record_success(50.0, v2, invoke_ms=0.5, cpu_ms=0.5)

    thread = threading.Thread(target=requests_on_probation)
    thread.start()
    updater.check()
    thread.join()
    assert serving(updater) == "1.0.0"
    assert [e.state for e in events][-2:] == [State.ROLLBACK, State.FAILED]
    reason = events[-1].reason or ""
    assert "median invoke time 0.5" in reason and "previous model's 0.05" in reason, reason
    assert "100 requests" in reason


def _third_bundle(bundles: Bundles, signing_keys: tuple[Path, Path]) -> bytes:
    """v2's model signed again as 3.0.0: a third distinct bundle."""
    model = read_bundle(io.BytesIO(bundles.v2)).members[MODEL]
    return build_bundle(model, bundles.samples_x, load_private_key(signing_keys[0]), version="3.0.0")


def _bundle_requests(peer: FleetPeer) -> int:
    return sum(1 for path in peer.requests if path.startswith("/bundles/"))


def test_a_rollback_to_a_kept_model_downloads_nothing(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    events: list[UpdateEvent] = []
    updater = build_updater(tmp_path / "state", trusted_dir, fleet_peer.url, events)
    v1 = fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    updater.check()
    v2 = fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    updater.check()
    assert serving(updater) == "2.0.0" and _bundle_requests(fleet_peer) == 2

    events.clear()
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")  # the fleet rolls the device back
    updater.check()
    assert serving(updater) == "1.0.0"
    assert _bundle_requests(fleet_peer) == 2  # no download request reached the fleet
    assert [e.state for e in events] == [
        State.DOWNLOAD,  # entered, and skipped: the model is still in the store
        State.VERIFY,  # from disk: signature, file hashes, the runtime loads it
        State.STAGE,
        State.SMOKE,
        State.ACTIVATE,
        State.PROBATION,
        State.COMMIT,
    ]
    assert all(e.ok for e in events)
    assert updater.store.read_pointer() == ActivePointer(active=v1, previous=v2)
    assert set(updater.store.stored()) == {v1, v2}


def test_a_damaged_kept_model_is_downloaded_again(
    tmp_path: Path, trusted_dir: Path, fleet_peer: FleetPeer, bundles: Bundles
) -> None:
    events: list[UpdateEvent] = []
    updater = build_updater(tmp_path / "state", trusted_dir, fleet_peer.url, events)
    v1 = fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    updater.check()
    fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
    updater.check()
    model_file = updater.store.model_dir(v1) / MODEL
    spoiled = bytearray(model_file.read_bytes())
    spoiled[len(spoiled) // 2] ^= 0x01
    model_file.write_bytes(bytes(spoiled))

    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    updater.check()
    assert serving(updater) == "1.0.0"
    assert _bundle_requests(fleet_peer) == 3
    assert updater.store.read(v1).sha256 == v1  # the files match their manifest again


@pytest.mark.parametrize(("keep", "kept"), [(0, 1), (1, 2), (2, 3)])
def test_commit_keeps_keep_previous_models(
    tmp_path: Path,
    trusted_dir: Path,
    fleet_peer: FleetPeer,
    bundles: Bundles,
    signing_keys: tuple[Path, Path],
    keep: int,
    kept: int,
) -> None:
    events: list[UpdateEvent] = []
    updater = build_updater(
        tmp_path / "state", trusted_dir, fleet_peer.url, events, update={"keep_previous": keep}
    )
    order = []
    third = _third_bundle(bundles, signing_keys)
    for bundle, version in ((bundles.v1, "1.0.0"), (bundles.v2, "2.0.0"), (third, "3.0.0")):
        order.append(fleet_peer.deploy(DEVICE, bundle, "digits", version))
        updater.check()
    assert serving(updater) == "3.0.0"
    v1, v2, v3 = order
    newest_first = [v3, v2, v1][:kept]
    assert sorted(updater.store.stored()) == sorted(newest_first)
    pointer = updater.store.read_pointer()
    assert [pointer.active, *pointer.history()] == newest_first
