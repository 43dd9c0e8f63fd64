"""Probation's false-rollback and detection rates, on a real TFLite model in the real runtime.

    python -m benchmarks.probation [--trials 20] [--requests 800] [--load 2] [--bundle B --trusted PUB]

The digits example is converted to a signed int8 bundle with the real CLI (TensorFlow runs in
child processes only), staged in a real model store and loaded twice as ``ActiveModel``s (two
interpreters: "old" and "new"). Client threads issue requests through the serving path as the
HTTP handler does (``ModelHolder.current`` -> ``ActiveModel.predict`` -> ``RequestMetrics``),
in a closed loop: load L is L threads, each sending its next request when the last one answered.

Each trial: L threads on the old model until it served ``--requests`` requests; the new model is
swapped in and L more threads start (2L); when the new model served ``--requests`` requests,
probation is judged. Two scenarios, ``--trials`` each:

* ``same model, 2x load``: the new model is the old one (a second interpreter of the same bundle);
  any rollback is a false one.
* ``3x slower in invoke``: the new model's ``LoadedModel.invoke`` is wrapped with a deterministic
  busy-wait (spinning on ``time.perf_counter``, so it costs CPU like a bigger model) of twice the
  old model's median invoke time measured once at the start: its invoke time is ~3x. Served at the
  same load L before and during (only the model changes), plus a run at 2L in the table as well.

Beside the new rule (``agent.update.probation.judge``: median invoke time, 95% bounds, at least
``probation_min_invokes`` per side), the old rule is evaluated on the same figures: the new
model's request-latency p50 against 3x the old model's recent request p50.
Ends with one JSON line ``{"benchmark": "probation", "figures": {...}}``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.serving import ActiveModel, ModelHolder
from agent.store import ModelStore
from agent.telemetry import RequestMetrics
from agent.update.probation import ProbationPolicy, judge, summarize
from edgefleet.stack import convert_digits, run_edgefleet
from protocol.bundle import read_bundle, read_samples
from protocol.signing import TrustedKeys
from protocol.tensors import dequantize

OLD_RULE_FACTOR = 3.0
"""The old rule's default: roll back when the request p50 exceeded 3x the previous model's."""


def build_bundle(work: Path) -> tuple[Path, Path]:
    """The digits example, converted and signed with the real CLI: (bundle, trusted public key)."""
    subprocess.run(
        [sys.executable, "-m", "converter.examples", "digits", str(work / "model")],
        check=True,
        capture_output=True,
    )
    run_edgefleet(["keys", "generate", "--out", str(work / "keys")])
    bundle = work / "digits.bundle"
    convert_digits(work / "model", "1.0.0", work / "keys" / "operator.key", bundle)
    return bundle, work / "keys" / "operator.pub"


def load_twice(
    bundle_path: Path, trusted: Path, state: Path
) -> tuple[Callable[[], ActiveModel], npt.NDArray[Any]]:
    """A loader of fresh ``ActiveModel``s of the staged bundle, and one request's input."""
    data = bundle_path.read_bytes()
    bundle = read_bundle(io.BytesIO(data))
    manifest = bundle.verify(TrustedKeys.from_paths([trusted]))
    store = ModelStore(state).open()
    sha = hashlib.sha256(data).hexdigest()
    store.stage(sha, bundle.manifest_bytes, bundle.signature.model_dump_json().encode(), bundle.members)
    samples = read_samples(bundle.members["samples.npz"])
    first = samples.inputs[0][:1]
    x = first.astype(np.float32) if samples.legacy else dequantize(first, manifest.inputs[0])
    return (lambda: ActiveModel.load(store.read(sha))), np.asarray(x, dtype=np.float32)


def slowed(model: ActiveModel, extra_s: float) -> ActiveModel:
    """``model`` with a deterministic busy-wait of ``extra_s`` in every invoke of its interpreter."""
    inner = model.loaded.invoke

    def invoke(arrays: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        out = inner(arrays)
        until = time.perf_counter() + extra_s
        while time.perf_counter() < until:
            pass
        return out

    model.loaded.invoke = invoke  # type: ignore[method-assign]
    return model


class Clients:
    """Closed-loop client threads on the serving path, each recording as the HTTP handler does."""

    def __init__(self, holder: ModelHolder, metrics: RequestMetrics, x: npt.NDArray[Any]) -> None:
        self.holder, self.metrics, self.x = holder, metrics, x
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def add(self, count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _loop(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            model = self.holder.current
            assert model is not None
            result = model.predict(self.x)
            self.metrics.record_success(
                (time.perf_counter() - started) * 1000,
                model.sha256,
                classes=result.classes,
                confidences=result.confidences,
                instances=1,
                invoke_ms=result.invoke_ms,
                cpu_ms=result.cpu_ms,
            )

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


@dataclass(frozen=True)
class Trial:
    new_rollback: bool
    old_rollback: bool
    ratio_invoke: float
    ratio_p50: float


def wait_for(metrics: RequestMetrics, sha: str, requests: int, since: int = 0) -> None:
    deadline = time.monotonic() + 60
    while metrics.usage(sha).requests - since < requests:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sha} served too few requests in 60 s")
        time.sleep(0.005)


def trial(
    old: ActiveModel,
    new: ActiveModel,
    x: npt.NDArray[Any],
    load: int,
    during: int,
    requests: int,
    policy: ProbationPolicy,
) -> Trial:
    holder, metrics = ModelHolder(), RequestMetrics()
    holder.swap(old)
    clients = Clients(holder, metrics, x)
    try:
        clients.add(load)
        wait_for(metrics, old.sha256, requests)
        before = metrics.usage(old.sha256)
        previous = summarize(before.recent_invoke.merged(), before.cpu_per_instance_ms)
        previous_p50 = before.recent_p50()
        mark = metrics.usage(new.sha256)
        holder.swap(new)
        clients.add(during - load)
        wait_for(metrics, new.sha256, requests, mark.requests)
        served = metrics.usage(new.sha256).minus(mark)
    finally:
        clients.close()
    verdict = judge(policy, served, previous, elapsed_s=policy.duration_s)
    p50 = served.latency.percentile(50)
    current = summarize(served.invoke)
    assert previous is not None and current is not None and previous_p50
    return Trial(
        new_rollback=verdict.failure is not None,
        old_rollback=p50 > OLD_RULE_FACTOR * previous_p50,
        ratio_invoke=current.median_ms / previous.median_ms,
        ratio_p50=p50 / previous_p50,
    )


def with_sha(model: ActiveModel, sha: str) -> ActiveModel:
    """The model under another digest: its requests are counted apart (old, same, slow)."""
    return replace(model, sha256=sha)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--requests", type=int, default=800, help="requests per model per trial")
    parser.add_argument("--load", type=int, default=2, help="client threads before probation (L)")
    parser.add_argument("--bundle", type=Path, help="a signed digits bundle (skips the conversion)")
    parser.add_argument("--trusted", type=Path, help="the public key of --bundle")
    args = parser.parse_args(argv)
    policy = ProbationPolicy(duration_s=1.0, min_invokes=200)  # the agent's default rule
    with tempfile.TemporaryDirectory(prefix="edgefleet-probation-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        if args.bundle is not None and args.trusted is not None:
            bundle, trusted = args.bundle, args.trusted
        else:
            bundle, trusted = build_bundle(work)
        built_s = time.monotonic() - started
        load, x = load_twice(bundle, trusted, work / "state")
        old = with_sha(load(), "a" * 64)
        same = with_sha(load(), "b" * 64)
        # Calibrate once: the old model's median invoke time per request, alone.
        calibration = [old.predict(x).invoke_ms or 0.0 for _ in range(2000)]
        base_ms = statistics.median(calibration)
        slow = with_sha(slowed(load(), 2 * base_ms / 1000), "c" * 64)
        scenarios = {
            "same model, 2x load": (same, args.load, 2 * args.load),
            "3x slower in invoke, same load": (slow, args.load, args.load),
            "3x slower in invoke, 2x load": (slow, args.load, 2 * args.load),
        }
        results: dict[str, list[Trial]] = {}
        for name, (new, before, during) in scenarios.items():
            results[name] = [
                trial(old, new, x, before, during, args.requests, policy) for _ in range(args.trials)
            ]
        total_s = time.monotonic() - started

    print(
        f"old model median invoke time alone: {base_ms * 1000:.1f} us; "
        f"busy-wait added: {2 * base_ms * 1000:.1f} us"
    )
    print(
        f"{args.trials} trials each, {args.requests} requests per model per trial, L = {args.load} threads\n"
    )
    header = (
        f"{'scenario':<34}{'new rule: rollbacks':>20}{'old rule: rollbacks':>21}"
        f"{'invoke ratio':>14}{'p50 ratio':>11}"
    )
    print(header)
    print("-" * len(header))
    figures: dict[str, Any] = {
        "trials": args.trials,
        "requests_per_model": args.requests,
        "load_threads": args.load,
    }
    keys = {
        "same model, 2x load": "same_model_2x_load",
        "3x slower in invoke, same load": "slower_3x_same_load",
        "3x slower in invoke, 2x load": "slower_3x_2x_load",
    }
    for name, trials in results.items():
        new_count = sum(t.new_rollback for t in trials)
        old_count = sum(t.old_rollback for t in trials)
        invoke = statistics.median(t.ratio_invoke for t in trials)
        p50 = statistics.median(t.ratio_p50 for t in trials)
        print(
            f"{name:<34}{new_count:>14}/{len(trials):<5}{old_count:>15}/{len(trials):<5}{invoke:>13.2f}x{p50:>10.2f}x"
        )
        figures[keys[name]] = {
            "new_rule_rollbacks": new_count,
            "old_rule_rollbacks": old_count,
            "median_invoke_ratio": round(invoke, 2),
            "median_request_p50_ratio": round(p50, 2),
        }
    same_key, slow_key = keys["same model, 2x load"], keys["3x slower in invoke, same load"]
    figures["false_rollbacks"] = f"{figures[same_key]['new_rule_rollbacks']}/{args.trials}"
    figures["detections"] = f"{figures[slow_key]['new_rule_rollbacks']}/{args.trials}"
    figures["old_invoke_us"] = round(base_ms * 1000, 1)
    figures["bundle_build_s"] = round(built_s, 1)
    figures["total_s"] = round(total_s, 1)
    print(f"\nfalse rollbacks (same model, 2x load): {figures['false_rollbacks']} (goal 0/{args.trials})")
    print(f"detections (3x slower, same load): {figures['detections']} (goal {args.trials}/{args.trials})")
    print(json.dumps({"benchmark": "probation", "figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
