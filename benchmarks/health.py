"""Drift detection measured: false alarms on clean devices, and how fast real shifts are caught.

    python -m benchmarks.health [--clean-windows 1000] [--trials 30] [--sizes 25,50,100,200] [--seed 0]

Two real bundles (``benchmarks.health_models``: the digits CNN and a breast-cancer MLP, both int8,
converted with the real CLI) are loaded as the agent loads them. Simulated devices send one-instance
requests through the agent's own telemetry code: ``ActiveModel.input_features`` and
``out_of_range_instances`` on the input, the real model's class and confidence, then
``RequestMetrics.record_success`` and, per window, ``prediction_health`` against the bundle's
baseline. (Each pool of inputs is run through the model once, in batches; a request then replays
its row.) Every window is judged by the fleet's default alert rules (``fleet.alerts.AlertRules``:
every window field the rules read), and beside them by the old rule alone (drift PSI > 0.25).

* clean: ``--clean-windows`` windows per window size, rows drawn from the training split;
* shifted: per shift, ``--trials`` trials of 2 windows each at each window size; a trial is detected
  when either window fires a rule. Each shift's accuracy cost is the real model's accuracy on the
  evaluation split, clean minus shifted (a class-prior change: the evaluation split reweighted).

Ends with one JSON line ``{"benchmark": "health", "figures": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.drift import FeatureBatch
from agent.telemetry import RequestMetrics, prediction_health
from benchmarks.health_models import Floats, Ints, Subject, build_subjects, describe
from fleet.alerts import AlertRules
from protocol.manifest import BaselineStats
from protocol.messages import PredictionHealth

WINDOW_FIELDS = ("input_drift", "stuck_features", "output_drift", "out_of_range_share", "drift_psi")
OLD_PSI = 0.25


@dataclass(frozen=True)
class Shift:
    name: str
    transform: Callable[[Floats], Floats] | None = None
    prior: dict[int, float] | None = None
    """Class shares of the shifted stream (the rest of the classes share what is left evenly)."""


@dataclass(frozen=True)
class Pool:
    """Rows a device may be sent, run once through the real model and the agent's input checks."""

    classes: Ints
    confidences: npt.NDArray[np.float32]
    features: FeatureBatch | None
    out_of_range: npt.NDArray[np.bool_]
    labels: Ints


def make_pool(subject: Subject, x: Floats, labels: Ints) -> Pool:
    model = subject.model
    results = [model.predict(x[i : i + 64]) for i in range(0, len(x), 64)]
    classes = np.concatenate([r.classes for r in results if r.classes is not None])
    confidences = np.concatenate([r.confidences for r in results if r.confidences is not None])
    outside = np.zeros(len(x), dtype=bool)
    outside[model.out_of_range_instances(x)] = True
    return Pool(classes, confidences, model.input_features(x), outside, labels)


def shifts_for(subject: Subject) -> list[Shift]:
    """The shifts injected into one model's streams; the dead features are drawn with their own
    seed, so they are the same whatever else the run draws."""
    rng = np.random.default_rng(7)
    baseline = subject.model.manifest.baseline
    assert baseline is not None and baseline.input_features is not None
    std = np.asarray(baseline.input_features.std, dtype=np.float32)
    shape = subject.train_x.shape[1:]

    def dead(count: int) -> Callable[[Floats], Floats]:
        chosen = rng.choice(np.flatnonzero(std > 0.25 * std.max()), size=count, replace=False)

        def apply(x: Floats) -> Floats:
            flat = x.reshape(len(x), -1).copy()
            flat[:, chosen] = 0.0
            return flat.reshape(len(x), *shape)

        return apply

    def stuck_at_mean(feature: int) -> Callable[[Floats], Floats]:
        value = float(np.mean(subject.train_x.reshape(len(subject.train_x), -1)[:, feature]))

        def apply(x: Floats) -> Floats:
            flat = x.reshape(len(x), -1).copy()
            flat[:, feature] = value
            return flat.reshape(len(x), *shape)

        return apply

    flat_std = std.reshape(shape)
    if subject.name == "digits":
        return [
            Shift("brightness +0.05", lambda x: np.clip(x + 0.05, 0, 1)),
            Shift("brightness +0.15", lambda x: np.clip(x + 0.15, 0, 1)),
            Shift("contrast x0.6", lambda x: x * 0.6),
            Shift("unscaled x16", lambda x: x * 16),
            Shift("4 dead pixels", dead(4)),
            Shift("16 dead pixels", dead(16)),
            Shift("prior: 8s+9s 60%", prior={8: 0.3, 9: 0.3}),
        ]
    return [
        Shift("mean +0.25 sd", lambda x: x + 0.25 * flat_std),
        Shift("mean +1 sd", lambda x: x + flat_std),
        Shift("scale x1.15", lambda x: x * 1.15),
        Shift("scale x0.7", lambda x: x * 0.7),
        Shift("dead sensor (reads 0)", dead(1)),
        Shift("stuck sensor (at mean)", stuck_at_mean(int(np.argmax(std)))),
        Shift("prior: 80% malignant", prior={0: 0.8}),
    ]


def class_weights(labels: Ints, prior: dict[int, float] | None, classes: int) -> npt.NDArray[np.float64]:
    """Per row, the weight that turns the rows' class shares into ``prior``."""
    if prior is None:
        return np.ones(len(labels))
    rest = [c for c in range(classes) if c not in prior]
    target = {**dict.fromkeys(rest, (1.0 - sum(prior.values())) / max(1, len(rest))), **prior}
    shares = np.bincount(labels, minlength=classes) / len(labels)
    return np.array([target[int(y)] / shares[int(y)] for y in labels])


def accuracy_cost(subject: Subject, shift: Shift, clean: float, classes: int) -> float:
    x = subject.eval_x if shift.transform is None else shift.transform(subject.eval_x)
    weights = class_weights(subject.eval_y, shift.prior, classes)
    return round(clean - subject.accuracy(x, weights), 1)


def run_window(pool: Pool, rows: npt.NDArray[np.intp], baseline: BaselineStats) -> PredictionHealth | None:
    """One window's requests through the agent's metrics and its prediction-health block."""
    metrics = RequestMetrics()
    features = pool.features
    for i in rows.tolist():
        metrics.record_success(
            1.0,
            classes=pool.classes[i : i + 1],
            confidences=pool.confidences[i : i + 1],
            instances=1,
            out_of_range=int(pool.out_of_range[i]),
            features=None
            if features is None
            else FeatureBatch(features.summary[i : i + 1], features.mean, features.edges),
        )
    return prediction_health(metrics.take(), baseline)


def fires(health: PredictionHealth | None, rules: AlertRules) -> tuple[bool, bool]:
    """(the fleet's default rules fire, the old drift-PSI rule fires) on one window."""
    if health is None:
        return False, False
    fired = False
    for name in WINDOW_FIELDS:
        threshold, value = rules.threshold(name), getattr(health, name)
        fired = fired or (threshold is not None and value is not None and value > threshold)
    return fired, health.drift_psi is not None and health.drift_psi > OLD_PSI


def sampler(
    pool: Pool, weights: npt.NDArray[np.float64], rng: np.random.Generator
) -> Callable[[int], npt.NDArray[np.intp]]:
    p = weights / weights.sum()
    return lambda n: rng.choice(len(p), size=n, p=p)


def clean_rows(
    subject: Subject, pool: Pool, sizes: list[int], windows: int, rng: np.random.Generator
) -> dict[str, object]:
    """False alarms on clean windows at each size, and the largest value each test reached."""
    baseline = subject.model.manifest.baseline
    assert baseline is not None
    rules, draw = AlertRules(), sampler(pool, np.ones(len(pool.classes)), rng)
    print(f"{'window':>8} {'false alarms/1000':>18} {'old PSI rule':>13} {'max input':>10} ", end="")
    print(f"{'max output':>11} {'max oor':>8}")
    figures: dict[str, object] = {}
    for size in sizes:
        healths = [run_window(pool, draw(size), baseline) for _ in range(windows)]
        new, old = zip(*(fires(h, rules) for h in healths), strict=True)
        scale = 1000 / windows
        top = {
            name: max((getattr(h, name) or 0.0) for h in healths if h is not None)
            for name in ("input_drift", "output_drift", "out_of_range_share")
        }
        print(
            f"{size:>8} {sum(new) * scale:>18.1f} {sum(old) * scale:>13.1f} {top['input_drift']:>10.2f} ",
            end="",
        )
        print(f"{top['output_drift']:>11.2f} {top['out_of_range_share']:>8.3f}")
        figures[f"false_alarms_per_1000_w{size}"] = round(sum(new) * scale, 1)
        figures[f"old_psi_false_alarms_per_1000_w{size}"] = round(sum(old) * scale, 1)
        figures[f"clean_max_w{size}"] = {k: round(v, 3) for k, v in top.items()}
    return figures


def shift_rows(
    subject: Subject, clean_accuracy: float, sizes: list[int], trials: int, rng: np.random.Generator
) -> dict[str, object]:
    """Per shift: its accuracy cost, and the share of trials flagged within 2 windows."""
    baseline = subject.model.manifest.baseline
    assert baseline is not None
    rules, classes = AlertRules(), len(baseline.class_frequencies or [])
    print(f"{'shift':<24} {'acc cost':>9} " + " ".join(f"{'w' + str(s):>11}" for s in sizes), end="")
    print("   (detected within 2 windows: rules / old PSI)")
    figures: dict[str, object] = {}
    for shift in shifts_for(subject):
        x = subject.train_x if shift.transform is None else shift.transform(subject.train_x)
        pool = make_pool(subject, x, subject.train_y)
        draw = sampler(pool, class_weights(subject.train_y, shift.prior, classes), rng)
        cost = accuracy_cost(subject, shift, clean_accuracy, classes)
        cells, rates = [], {}
        for size in sizes:
            hits = old_hits = 0
            for _ in range(trials):
                flags = [fires(run_window(pool, draw(size), baseline), rules) for _ in range(2)]
                hits += any(f[0] for f in flags)
                old_hits += any(f[1] for f in flags)
            rates[size] = (round(hits / trials, 3), round(old_hits / trials, 3))
            cells.append(f"{hits / trials:>5.2f}/{old_hits / trials:<5.2f}")
        print(f"{shift.name:<24} {cost:>+9.1f} " + " ".join(cells))
        figures[shift.name] = {
            "accuracy_cost_points": cost,
            **{f"detected_w{s}": r[0] for s, r in rates.items()},
            **{f"old_psi_detected_w{s}": r[1] for s, r in rates.items()},
        }
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clean-windows", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--sizes", default="25,50,100,200")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", type=Path, help="keep the trained models and bundles here (reused when present)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    rules = AlertRules()
    started = time.perf_counter()
    figures: dict[str, object] = {"thresholds": {n: rules.threshold(n) for n in WINDOW_FIELDS}}
    with tempfile.TemporaryDirectory(prefix="health-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for subject in build_subjects(work):
            print(describe(subject))
            clean_accuracy = subject.accuracy(subject.eval_x)
            print(f"\n{subject.name}: clean accuracy {clean_accuracy:.1f} %, ", end="")
            print(f"{args.clean_windows} clean windows per size")
            pool = make_pool(subject, subject.train_x, subject.train_y)
            model_figures: dict[str, object] = {"clean_accuracy": round(clean_accuracy, 1)}
            model_figures |= clean_rows(subject, pool, sizes, args.clean_windows, rng)
            print()
            model_figures |= shift_rows(subject, clean_accuracy, sizes, args.trials, rng)
            figures[subject.name] = model_figures
            print()
    figures["runtime_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"benchmark": "health", "figures": figures}))


if __name__ == "__main__":
    main()
