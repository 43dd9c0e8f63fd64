"""Side by side: the new model's cost against the previous one's, measured in turns. Logic only:
the caller passes the two timed runs.

At activation, before the swap, the previous model (still serving) and the new one take turns on
their bundles' first sample (previous, new, previous, new, ...) in one thread, for at most
``budget_s`` seconds and ``MAX_PAIRS`` pairs; each pair's ratio of CPU time and of wall time is
kept, and probation judges their medians (``agent.update.probation``).

Why: probation's other reading compares the new model's requests with the previous model's
requests of before, taken minutes apart. On a shared machine what the other processes do in
between (a sibling hyper-thread busy, caches taken, the CPU's clock) changes an invoke's cost,
CPU time included, by tens of percent: the same model read 0.5x-1.5x at the 10th percentile and
a model 2.7x slower 1.7x-4x. The two halves of a pair run microseconds apart and meet the same
machine, so their ratio is the models' own: 2.7x +- 2% in the same trials.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

from agent.update.record import SideBySide

Run = Callable[[], tuple[float, float]]
"""One timed invoke of a model: (wall ms, CPU ms)."""

MIN_PAIRS = 20
"""Pairs needed for a reading (fewer fit in the budget: a big model; then only the requests are judged)."""
MAX_PAIRS = 200
BOUND_Z = 1.96


def measure(
    previous: Run,
    new: Run,
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
    pairs: int = MAX_PAIRS,
) -> SideBySide | None:
    """The two models in turns: None when fewer than ``MIN_PAIRS`` pairs fit in ``budget_s``."""
    deadline = clock() + budget_s
    previous(), new()  # the first invoke of an interpreter allocates: not its cost
    walls: list[float] = []
    cpus: list[float] = []
    shares: list[float] = []
    while len(walls) < pairs and clock() < deadline:
        old_wall, old_cpu = previous()
        new_wall, new_cpu = new()
        if min(old_wall, old_cpu, new_wall, new_cpu) <= 0:
            continue  # a clock that did not tick: no ratio
        walls.append(new_wall / old_wall)
        cpus.append(new_cpu / old_cpu)
        shares.append(min(old_cpu / old_wall, new_cpu / new_wall))
    if len(walls) < MIN_PAIRS:
        return None
    cpu, cpu_low, cpu_high = median_bounds(cpus)
    wall, wall_low, wall_high = median_bounds(walls)
    return SideBySide(
        pairs=len(walls),
        cpu_ratio=_sig(cpu),
        cpu_low=_sig(cpu_low),
        cpu_high=_sig(cpu_high),
        wall_ratio=_sig(wall),
        wall_low=_sig(wall_low),
        wall_high=_sig(wall_high),
        cpu_share=_sig(statistics.median(shares)),
    )


def median_bounds(values: Sequence[float]) -> tuple[float, float, float]:
    """The median and its distribution-free 95% bounds: the values of rank n/2 -+ 1.96 sqrt(n)/2."""
    ordered = sorted(values)
    n = len(ordered)
    half = BOUND_Z * math.sqrt(n) / 2
    low = ordered[max(0, math.floor(n / 2 - half) - 1)]
    high = ordered[min(n - 1, math.ceil(n / 2 + half))]
    return statistics.median(ordered), low, high


def _sig(value: float) -> float:
    return float(f"{value:.4g}")
