"""Probation: the rules that judge a newly activated model while it serves. Logic only, no I/O.

The updater samples the new model's usage (requests, inference errors, latency histogram) every
``check_interval_s``, runs the bundle's samples through the serving model as a health check,
and asks ``judge`` whether to keep watching, commit, or roll back (with the reason in words).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.telemetry import ModelUsage


@dataclass(frozen=True)
class ProbationPolicy:
    duration_s: float = 0.0
    """How long the new model is watched; 0 commits at once."""
    requests: int = 0
    """End early after this many requests on the new model; 0: time only."""
    min_requests: int = 20
    """Requests needed before the error rate or the latency is judged."""
    max_error_rate: float = 0.05
    max_latency_factor: float = 3.0
    check_interval_s: float = 5.0


@dataclass(frozen=True)
class Verdict:
    done: bool
    failure: str | None = None
    """Why the new model must be rolled back; None when it passed (or is still watched)."""


WATCHING = Verdict(done=False)
PASSED = Verdict(done=True)


def judge(
    policy: ProbationPolicy,
    usage: ModelUsage,
    previous_p50_ms: float | None,
    elapsed_s: float,
) -> Verdict:
    """``usage`` counts what the new model served since it was activated.

    Errors are judged as soon as ``min_requests`` were served; latency only when probation ends
    (by time or by requests), over everything the new model served: its first requests after the
    switch are slow (a cold interpreter, the switch's own work) and are not representative.
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
    p50 = usage.latency.percentile(50) if usage.latency.total else None
    if (
        usage.requests >= policy.min_requests
        and previous_p50_ms
        and p50 is not None
        and p50 > previous_p50_ms * policy.max_latency_factor
    ):
        return Verdict(
            True,
            f"probation failed: p50 latency {p50:.3g} ms is more than {policy.max_latency_factor:g}x "
            f"the previous model's {previous_p50_ms:.3g} ms",
        )
    return PASSED
