"""Probation's side-by-side reading: the two models in turns at activation, so a machine whose
speed changes (other processes, a busy sibling core) slows both halves of each pair alike.

The measurement's arithmetic on made-up runs, the judge's use of it, and the real serving path's
timer on a real TFLite model.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from agent.serving import ActiveModel
from agent.store import ModelStore
from agent.update.probation import ProbationPolicy, judge
from agent.update.side_by_side import MIN_PAIRS, measure, median_bounds
from agent.usage import ModelUsage
from protocol.bundle import SAMPLES
from protocol.samples import read_samples
from tests.support.agent import Bundles, stage_directly

POLICY = ProbationPolicy(duration_s=60, max_latency_factor=2, min_invokes=200)
"""What probation reads at its end (``elapsed_s`` 61): no request on the new model reaches
``min_invokes``, so only the side-by-side reading can judge speed."""


def machine(seed: int) -> Callable[[float], Callable[[], tuple[float, float]]]:
    """Runs of models on a machine whose speed swings 1x-3x from moment to moment (each swing
    lasts a pair: both halves meet it) and whose CPU time is 90% of the wall time."""
    rng = random.Random(seed)
    slowdown = [1.0]

    def model(cost_ms: float, leads: bool = False) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            if leads:  # the previous model runs first in each pair: a new moment begins
                slowdown[0] = rng.uniform(1.0, 3.0)
            wall = cost_ms * slowdown[0] * rng.uniform(0.97, 1.03)
            return wall, 0.9 * wall

        return run

    return lambda cost_ms: model(cost_ms, leads=cost_ms == 0.05)


def test_a_model_three_times_slower_is_rolled_back_whatever_the_machine_does() -> None:
    runs = machine(1)
    pairs = measure(runs(0.05), runs(0.15), budget_s=60)
    assert pairs is not None and pairs.pairs == 200
    assert 2.8 < pairs.cpu_low <= pairs.cpu_ratio <= pairs.cpu_high < 3.2
    result = judge(POLICY, ModelUsage(), None, 61, pairs)
    assert result.failure is not None, result
    assert "side-by-side CPU time 2.99x" in result.failure
    assert "CPU time more than 2x slower" in result.failure
    assert "invoke time not judged" in result.failure  # the requests' reading, too few of them


def test_the_same_model_on_a_swinging_machine_passes() -> None:
    runs = machine(2)
    pairs = measure(runs(0.05), runs(0.0500001), budget_s=60)
    assert pairs is not None and 0.95 < pairs.cpu_ratio < 1.05
    result = judge(POLICY, ModelUsage(), None, 61, pairs)
    assert result.failure is None and result.note is not None
    assert "side-by-side CPU time 1" in result.note or "side-by-side CPU time 0.9" in result.note
    assert "within 2x" in result.note


def test_work_the_thread_does_not_see_is_judged_on_wall_time() -> None:
    """An accelerator delegate: the thread waits, its CPU time is a tenth of the wall time and
    equal for both models; the wall time shows the new model 3x slower."""
    pairs = measure(lambda: (1.0, 0.1), lambda: (3.0, 0.1), budget_s=60)
    assert pairs is not None and pairs.cpu_share < 0.5
    result = judge(POLICY, ModelUsage(), None, 61, pairs)
    assert result.failure is not None and "side-by-side invoke time more than 2x slower" in result.failure


def test_too_few_pairs_in_the_budget_measure_nothing() -> None:
    now = [0.0]

    def slow_run() -> tuple[float, float]:
        now[0] += 0.1  # a big model: 100 ms an invoke
        return 100.0, 100.0

    assert measure(slow_run, slow_run, budget_s=1.0, clock=lambda: now[0]) is None
    assert measure(lambda: (0.0, 0.0), lambda: (0.1, 0.1), budget_s=0.05) is None  # no clock tick
    assert MIN_PAIRS >= 20


def test_the_median_bounds_are_order_statistics() -> None:
    values = [float(v) for v in range(1, 101)]
    middle, low, high = median_bounds(values)
    assert middle == 50.5 and low == 40.0 and high == 61.0


def test_a_real_model_timed_in_turns(tmp_path: Path, trusted_dir: Path, bundles: Bundles) -> None:
    """The serving path's timer on the bundle's first sample, for two interpreters of v1."""
    state = tmp_path / "state"
    sha = stage_directly(state, bundles.v1, trusted_dir)
    stored = ModelStore(state).read(sha)
    samples = read_samples((stored.path / SAMPLES).read_bytes())
    old, new = (ActiveModel.load(stored, runtime="tflite-runtime") for _ in range(2))
    wall, cpu = old.time_first_sample(samples)
    assert wall > 0 and cpu >= 0
    pairs = measure(
        lambda: old.time_first_sample(samples), lambda: new.time_first_sample(samples), budget_s=120, pairs=50
    )
    assert pairs is not None and pairs.pairs == 50
    assert pairs.cpu_low <= pairs.cpu_ratio <= pairs.cpu_high
