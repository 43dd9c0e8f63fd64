"""Judge one wave from its devices' telemetry. Pure: numbers in, gate results out."""

from __future__ import annotations

import statistics

from fleet.rollout_spec import GateResult, Gates
from fleet.storage.records import WaveHealth


def rollback_gate(gates: Gates, health: WaveHealth) -> GateResult:
    count = len(health.rollbacks)
    detail = "; ".join(health.rollbacks[:3]) or "no agent rolled back"
    return GateResult(
        gate="rollbacks",
        ok=count <= gates.max_rollbacks,
        value=count,
        limit=gates.max_rollbacks,
        detail=detail,
    )


def evaluate(gates: Gates, health: WaveHealth) -> list[GateResult]:
    """Every gate, judged; a gate without data to judge passes and says so."""
    results = [rollback_gate(gates, health)]

    offline = health.offline / health.devices if health.devices else 0.0
    results.append(
        GateResult(
            gate="offline_share",
            ok=offline <= gates.max_offline_share,
            value=offline,
            limit=gates.max_offline_share,
            detail=f"{health.offline} of {health.devices} devices offline",
        )
    )

    if health.latency_p95 and health.baseline_p95:
        new = statistics.median(health.latency_p95)
        old = statistics.median(health.baseline_p95)
        ratio = new / old if old > 0 else (1.0 if new == 0 else float("inf"))
        results.append(
            GateResult(
                gate="latency_p95_ratio",
                ok=ratio <= gates.max_latency_p95_ratio,
                value=ratio,
                limit=gates.max_latency_p95_ratio,
                detail=f"median window p95 {new:.2f} ms vs {old:.2f} ms on the previous model",
            )
        )
    else:
        results.append(
            GateResult(
                gate="latency_p95_ratio",
                ok=True,
                value=None,
                limit=gates.max_latency_p95_ratio,
                detail="not judged: no latency from the previous model or the new one",
            )
        )

    rate = health.errors / health.requests if health.requests else 0.0
    results.append(
        GateResult(
            gate="error_rate",
            ok=rate <= gates.max_error_rate,
            value=rate,
            limit=gates.max_error_rate,
            detail=f"{health.errors} failed of {health.requests} requests",
        )
    )

    for gate, values, limit in (
        ("drift_psi", health.drift_psi, gates.max_drift_psi),
        ("low_confidence_share", health.low_confidence_share, gates.max_low_confidence_share),
    ):
        if values:
            mean = statistics.fmean(values)
            results.append(
                GateResult(
                    gate=gate,
                    ok=mean <= limit,
                    value=mean,
                    limit=limit,
                    detail=f"mean over {len(values)} windows",
                )
            )
        else:
            results.append(
                GateResult(
                    gate=gate, ok=True, value=None, limit=limit, detail="not judged: no window reported it"
                )
            )
    return results


def ready_to_judge(health: WaveHealth) -> str | None:
    """None when every device of the wave runs the model and reported a window on it; else why not."""
    if health.on_target < health.devices:
        return f"{health.on_target} of {health.devices} devices run the new model"
    if health.devices_with_windows < health.devices:
        return f"{health.devices_with_windows} of {health.devices} devices reported telemetry on it"
    return None
