"""Probation: the rules that judge a newly activated model while it serves. Logic only, no I/O.

The updater samples the new model's usage (requests, inference errors, invoke times) every
``check_interval_s``, runs the bundle's samples through the serving model as a health check,
and asks ``judge`` whether to keep watching, commit, or roll back (with the reason in words).

Speed is judged on two readings, either of which rolls back: the two models timed in turns at
activation (``agent.update.side_by_side``: the lower 95% bound of the median pair ratio of CPU
time above ``max_latency_factor``; immune to what else the machine runs, since both halves of a
pair meet the same machine), and the requests, as follows.

The requests' reading is the model's own invoke time per instance (``agent.usage.ModelUsage.invoke``),
not on request latency: request latency includes the wait for the interpreter, which grows with
load, so a good model met by twice the traffic used to fail. The rule, with ``n`` and ``m`` timed
requests of the new and the previous model (each at least ``min_invokes``):

    roll back when  low(new p10)  >  max_latency_factor x high(previous p10)

for the invoke time (wall clock), or the same for the serving thread's CPU time per instance.
``p10`` is the 10th percentile; ``low``/``high`` are its distribution-free 95% bounds (order
statistics: it lies between the values of rank ``np -+ 1.96 sqrt(np(1-p))``; with histograms, the
lower edge of the lower rank's bucket and the upper edge of the upper rank's, ~6% apart). The model
is rolled back only when even the reading most favourable to it is slower by more than the factor.

Why the 10th percentile and not the median: the two samples are taken one after the other, and
what interferes with an invoke (the thread preempted by another process, waiting for the GIL, a
cold cache after an idle spell) only adds time and changes with the machine's load, not with the
model. On a shared two-core machine the same model's median invoke time moved between 60 and 94 us
from one trial to the next while its 10th percentile stayed within 45-56 us; a model 3x slower read
as 1.6x-3.2x on medians and 2.5x-3.0x on 10th percentiles. The fast end is the model's own cost.
Why CPU time too: it does not count the time the thread was preempted; wall time stays judged for
work CPU time does not see (an accelerator delegate the thread waits for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.update.record import InvokeSummary, SideBySide
from agent.usage import LatencyHistogram, ModelUsage

BOUND_Z = 1.96
"""Normal quantile of the percentile bounds (95% each)."""
FAST = 0.1
"""The percentile judged: the fast end of the invoke times, where nothing else interfered."""


@dataclass(frozen=True)
class ProbationPolicy:
    duration_s: float = 0.0
    """How long the new model is watched; 0 commits at once."""
    requests: int = 0
    """End early after this many requests on the new model; 0: time only."""
    min_requests: int = 20
    """Requests needed before the error rate is judged."""
    max_error_rate: float = 0.05
    max_latency_factor: float = 2.0
    """The new model may cost up to this factor x the previous one's (both readings, see the module)."""
    min_invokes: int = 200
    """Timed requests needed on each side (new and previous model) before speed is judged."""
    check_interval_s: float = 5.0


@dataclass(frozen=True)
class Verdict:
    done: bool
    failure: str | None = None
    """Why the new model must be rolled back; None when it passed (or is still watched)."""
    note: str | None = None
    """What the speed rule concluded when the model passed (judged or why not), for the log."""


WATCHING = Verdict(done=False)


def _quantile(hist: LatencyHistogram, p: float) -> tuple[float, float, float]:
    """The ``p`` quantile of a non-empty sample and its 95% bounds: distribution-free (the quantile
    lies between the values of rank ``np -+ 1.96 sqrt(np(1-p))``), read from the histogram
    conservatively (the lower edge of the lower rank's bucket, the upper edge of the upper's)."""
    n = hist.total
    centre = n * p
    half = BOUND_Z * math.sqrt(n * p * (1 - p))
    return (
        _sig(hist.upper_at(math.ceil(centre))),
        _sig(hist.lower_at(math.floor(centre - half))),
        _sig(hist.upper_at(math.ceil(centre + half) + 1)),
    )


def summarize(
    invoke: LatencyHistogram, cpu_ms: float | None = None, cpu: LatencyHistogram | None = None
) -> InvokeSummary | None:
    """A sample's invoke time: its median and 10th percentile with their 95% bounds (None for an
    empty sample), and the 10th percentile of the CPU time per instance when ``cpu`` holds a sample."""
    n = invoke.total
    if n == 0:
        return None
    median, low, high = _quantile(invoke, 0.5)
    fast, fast_low, fast_high = _quantile(invoke, FAST)
    summary = InvokeSummary(
        count=n,
        median_ms=median,
        low_ms=low,
        high_ms=high,
        cpu_ms=_sig(cpu_ms) if cpu_ms is not None else None,
        fast_ms=fast,
        fast_low_ms=fast_low,
        fast_high_ms=fast_high,
    )
    if cpu is None or not cpu.total:
        return summary
    cpu_fast, cpu_low, cpu_high = _quantile(cpu, FAST)
    return summary.model_copy(
        update={
            "cpu_count": cpu.total,
            "cpu_fast_ms": cpu_fast,
            "cpu_fast_low_ms": cpu_low,
            "cpu_fast_high_ms": cpu_high,
        }
    )


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


@dataclass(frozen=True)
class _Measure:
    """One speed figure of both models: the new one's value and lower bound, the previous one's
    value and upper bound."""

    name: str
    new: float
    new_low: float
    old: float
    old_high: float

    def slower(self, factor: float) -> bool:
        return self.new_low > factor * self.old_high

    def __str__(self) -> str:
        return (
            f"{self.name} {self.new:.3g} ms (95% bound >= {self.new_low:.3g} ms), the previous "
            f"model's {self.old:.3g} ms (<= {self.old_high:.3g} ms)"
        )


def _measures(new: InvokeSummary, previous: InvokeSummary, wanted: int) -> list[_Measure]:
    """What is judged: the 10th percentiles of invoke time and of CPU time per instance (CPU time
    when both sides measured enough of it); a previous summary saved by an agent that did not
    record percentiles is judged on the medians."""
    if previous.fast_ms is None or previous.fast_high_ms is None:
        return [
            _Measure("median invoke time", new.median_ms, new.low_ms, previous.median_ms, previous.high_ms)
        ]
    assert new.fast_ms is not None and new.fast_low_ms is not None
    judged = [
        _Measure("invoke time p10", new.fast_ms, new.fast_low_ms, previous.fast_ms, previous.fast_high_ms)
    ]
    cpu = (new.cpu_fast_ms, new.cpu_fast_low_ms, previous.cpu_fast_ms, previous.cpu_fast_high_ms)
    if min(new.cpu_count, previous.cpu_count) >= wanted and None not in cpu:
        judged.append(_Measure("CPU time p10", *cpu))  # type: ignore[arg-type]
    return judged


CPU_SHARE = 0.5
"""Below this share of the wall time seen as the thread's CPU time, the work happens elsewhere
(an accelerator delegate, the interpreter's helper threads): the side-by-side wall time is judged too."""


def _side_by_side(pairs: SideBySide, factor: float) -> tuple[str, list[str]]:
    """The side-by-side reading in words, and the names of what it finds slower than ``factor``."""
    judged = [("side-by-side CPU time", pairs.cpu_ratio, pairs.cpu_low, pairs.cpu_high)]
    if pairs.cpu_share < CPU_SHARE:
        judged.append(("side-by-side invoke time", pairs.wall_ratio, pairs.wall_low, pairs.wall_high))
    words = "; ".join(
        f"{name} {ratio:.3g}x the previous model's (95% bounds {low:.3g}x-{high:.3g}x, {pairs.pairs} pairs)"
        for name, ratio, low, high in judged
    )
    return words, [name for name, _, low, _ in judged if low > factor]


def _on_requests(policy: ProbationPolicy, usage: ModelUsage, previous: InvokeSummary | None) -> Verdict:
    """The requests' reading: the new model's invoke times against the previous model's recent
    ones (failure: slower; note: within the factor, or why not judged)."""
    new = summarize(usage.invoke, usage.cpu_per_instance_ms, usage.cpu)
    wanted = policy.min_invokes
    if previous is None or previous.count < wanted:
        had = 0 if previous is None else previous.count
        return Verdict(
            True,
            note=f"invoke time not judged: the previous model has {had} timed requests in this "
            f"process, {wanted} needed",
        )
    if new is None or new.count < wanted:
        had = 0 if new is None else new.count
        return Verdict(
            True, note=f"invoke time not judged: the new model served {had} timed requests, {wanted} needed"
        )
    factor = policy.max_latency_factor
    judged = _measures(new, previous, wanted)
    figures = (
        f"median invoke time {new.median_ms:.3g} ms per instance ({new.count} requests), the previous "
        f"model's {previous.median_ms:.3g} ms ({previous.count} requests); "
        + "; ".join(str(m) for m in judged)
    )
    slower = [m.name for m in judged if m.slower(factor)]
    if slower:
        return Verdict(True, f"{figures}: {' and '.join(slower)} more than {factor:g}x slower")
    return Verdict(True, note=f"{figures}: within {factor:g}x")


def judge(
    policy: ProbationPolicy,
    usage: ModelUsage,
    previous: InvokeSummary | None,
    elapsed_s: float,
    side_by_side: SideBySide | None = None,
) -> Verdict:
    """``usage`` counts what the new model served since it was activated; ``previous`` is the
    previous model's recent invoke time (None: it served nothing timed in this process);
    ``side_by_side`` the two models measured in turns at activation (None: not measured).

    Errors are judged as soon as ``min_requests`` were served; speed only when probation ends
    (by time or by requests). The model is rolled back when either reading finds it slower than
    ``max_latency_factor``: the side-by-side one (the lower 95% bound of the median pair ratio of
    CPU time above the factor), or the requests' (see the module). Too few timed requests on
    either side is not a failure of the requests' reading: its note says speed was not judged.
    """
    if usage.requests >= policy.min_requests:
        rate = usage.errors / usage.requests
        if rate > policy.max_error_rate:
            return Verdict(
                True,
                f"probation failed: {usage.errors} of {usage.requests} requests failed in inference "
                f"({rate:.1%}; allowed {policy.max_error_rate:.1%})",
            )
    if not (elapsed_s >= policy.duration_s or (policy.requests and usage.requests >= policy.requests)):
        return WATCHING
    requests = _on_requests(policy, usage, previous)
    factor = policy.max_latency_factor
    readings: list[str] = []
    slower: list[str] = []
    if side_by_side is not None:
        words, slower = _side_by_side(side_by_side, factor)
        found = f"{' and '.join(slower)} more than {factor:g}x slower" if slower else f"within {factor:g}x"
        readings.append(f"{words}: {found}")
    readings.append(requests.failure or requests.note or "")
    if slower or requests.failure is not None:
        return Verdict(True, "probation failed: " + "; ".join(readings))
    return Verdict(True, note="; ".join(readings))
