"""Probation: the rules that judge a newly activated model while it serves. Logic only, no I/O.

The updater samples the new model's usage (requests, inference errors, invoke times) every
``check_interval_s``, runs the bundle's samples through the serving model as a health check,
and asks ``judge`` whether to keep watching, commit, or roll back (with the reason in words).

Speed is judged on the model's own invoke time per instance (``agent.usage.ModelUsage.invoke``),
not on request latency: request latency includes the wait for the interpreter, which grows with
load, so a good model met by twice the traffic used to fail. The rule, with ``n`` and ``m`` timed
requests of the new and the previous model (each at least ``min_invokes``):

    roll back when  low(new median)  >  max_latency_factor x high(previous median)

``low``/``high`` are distribution-free 95% bounds of each median (order statistics: the median
lies between the values of rank ``n/2 -+ 1.96 sqrt(n)/2``; with histograms, the lower edge of the
lower rank's bucket and the upper edge of the upper rank's, ~6% apart). The model is rolled back only when
even the reading most favourable to it is slower by more than the factor: noise, a few cold
invokes or a busier CPU do not fail a good model, and a model clearly slower still fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.update.record import InvokeSummary
from agent.usage import LatencyHistogram, ModelUsage

MEDIAN_Z = 1.96
"""Normal quantile of the median bounds (95% each)."""


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
    """Applied to the median invoke time (see the module's rule)."""
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


def summarize(invoke: LatencyHistogram, cpu_ms: float | None = None) -> InvokeSummary | None:
    """The median invoke time of a sample with its 95% bounds (None for an empty sample)."""
    n = invoke.total
    if n == 0:
        return None
    half = MEDIAN_Z * math.sqrt(n) / 2
    return InvokeSummary(
        count=n,
        median_ms=_sig(invoke.upper_at(math.ceil(n / 2))),
        low_ms=_sig(invoke.lower_at(math.floor(n / 2 - half))),
        high_ms=_sig(invoke.upper_at(math.ceil(n / 2 + half) + 1)),
        cpu_ms=_sig(cpu_ms) if cpu_ms is not None else None,
    )


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def _cpu(summary: InvokeSummary) -> str:
    return f", CPU {summary.cpu_ms:.3g} ms" if summary.cpu_ms is not None else ""


def judge(
    policy: ProbationPolicy,
    usage: ModelUsage,
    previous: InvokeSummary | None,
    elapsed_s: float,
) -> Verdict:
    """``usage`` counts what the new model served since it was activated; ``previous`` is the
    previous model's recent invoke time (None: it served nothing timed in this process).

    Errors are judged as soon as ``min_requests`` were served; speed only when probation ends
    (by time or by requests), over everything the new model served. Too few timed requests on
    either side is not a failure: the model passes and the note says speed was not judged.
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
    new = summarize(usage.invoke, usage.cpu_per_instance_ms)
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
    figures = (
        f"median invoke time {new.median_ms:.3g} ms per instance (95% bound >= {new.low_ms:.3g} ms, "
        f"{new.count} requests{_cpu(new)}); the previous model's {previous.median_ms:.3g} ms "
        f"(95% bound <= {previous.high_ms:.3g} ms, {previous.count} requests{_cpu(previous)})"
    )
    if new.low_ms > factor * previous.high_ms:
        return Verdict(True, f"probation failed: {figures}: more than {factor:g}x slower")
    return Verdict(True, note=f"{figures}: within {factor:g}x")
