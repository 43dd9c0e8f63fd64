"""Phase "choose": the requested mode, or for ``--mode auto`` the smallest (then fastest) mode
inside the budget; a model over budget fails here with the table of every mode tried. Also the
``conversion`` section of the manifest: the facts about that choice an operator reviews.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from converter.errors import AccuracyGateError, ModelValidationError
from converter.gates import Gate
from converter.plan import EXPERIMENTAL_MODES
from converter.report import candidates_table
from converter.request import ConversionRequest
from converter.results import Candidate
from protocol.manifest import CandidateReport, ConversionReport, QuantizationMode

SIZE_TIE = 1.05
"""Within 5 % of the smallest size, the fastest wins: a few bytes are not worth a slower model."""
LATENCY_TIE = 1.05
"""Latencies within 5 % are a tie (host timing noise), broken by size, then by the simpler mode."""


def choose(
    request: ConversionRequest,
    candidates: list[Candidate],
    gates: list[Gate],
    reference: bytes | None,
    layer_report: Callable[[], str],
) -> Candidate:
    """The candidate to ship; raise the candidate's error, or ``AccuracyGateError`` with the table.

    ``layer_report`` runs TensorFlow's per-layer debugger, only when a requested int8 model is
    over budget (it converts again, so it is not run otherwise).
    """
    chosen = _pick(request, candidates, gates, reference)
    if not chosen.ok:
        report = failure_report(request, candidates, gates, reference)
        debug = ""
        if chosen.mode is QuantizationMode.INT8 and chosen.gate_failures and request.layer_report:
            debug = layer_report()
        raise AccuracyGateError(
            f"mode {chosen.mode.value} is outside the accuracy budget: "
            f"{'; '.join(chosen.gate_failures)}; "
            "try another --mode (or --mode auto), more calibration data, or --float-layers",
            report + debug,
        )
    return chosen


def _pick(
    request: ConversionRequest, candidates: list[Candidate], gates: list[Gate], reference: bytes | None
) -> Candidate:
    if request.mode != "auto":
        (candidate,) = candidates
        if candidate.error is not None:
            raise candidate.error
        return candidate
    eligible = [c for c in candidates if c.ok and c.mode not in EXPERIMENTAL_MODES]
    if not eligible:
        raise AccuracyGateError(
            "no mode converts, loads in "
            f"{request.runtime} and stays inside the accuracy budget "
            f"({', '.join(str(g) for g in gates)}); see the table",
            failure_report(request, candidates, gates, reference),
        )
    runtime = request.runtime if request.runtime != "any" else None

    def key(c: Candidate) -> tuple[int, float]:
        assert c.model is not None and c.primary is not None
        latency = c.latency(runtime) if runtime else c.primary.check.latency_ms_p50
        return len(c.model), latency or float("inf")

    best_size = min(key(c)[0] for c in eligible)
    close = [c for c in eligible if key(c)[0] <= best_size * SIZE_TIE]
    fastest = min(key(c)[1] for c in close)
    finalists = [c for c in close if key(c)[1] <= fastest * LATENCY_TIE]
    return min(finalists, key=lambda c: key(c)[0])


def explain_choice(
    request: ConversionRequest, chosen: Candidate, candidates: list[Candidate], gates: list[Gate]
) -> str:
    """One sentence for the report: why ``--mode auto`` shipped ``chosen``, and why not the others."""
    assert chosen.model is not None
    runtime = request.runtime if request.runtime != "any" else "an installed runtime"
    budget = ", ".join(str(g) for g in gates) or "none"
    eligible = [c for c in candidates if c.ok and c.mode not in EXPERIMENTAL_MODES and c.model is not None]
    smallest = min(eligible, key=lambda c: len(c.model or b""))
    if smallest is chosen:
        why = "the smallest"
    else:
        why = (
            f"the fastest of those within {SIZE_TIE - 1:.0%} of the smallest "
            f"({smallest.mode.value}, {len(smallest.model or b''):,} bytes)"
        )
    others = []
    for c in candidates:
        if c is chosen or c in eligible:
            continue
        if c.mode in EXPERIMENTAL_MODES and c.ok:
            others.append(f"{c.mode.value} experimental")
        elif isinstance(c.error, ModelValidationError):
            others.append(f"{c.mode.value} does not load in {runtime}")
        elif c.error is not None:
            others.append(f"{c.mode.value} did not convert")
        elif c.gate_failures:
            others.append(f"{c.mode.value} over budget")
        else:
            others.append(f"{c.mode.value} does not load")
    excluded = f"; left out: {', '.join(others)}" if others else ""
    return (
        f"auto chose {chosen.mode.value} ({len(chosen.model):,} bytes): {why} of the modes that convert, "
        f"load in {runtime} and stay inside the budget ({budget}){excluded}"
    )


def failure_report(
    request: ConversionRequest, candidates: list[Candidate], gates: list[Gate], reference: bytes | None
) -> str:
    return candidates_table(
        request.task, candidates, len(reference) if reference else None, gates, chosen=None
    )


def recurrent_summary(facts: dict[str, Any], ops: list[str]) -> str | None:
    """What became of the model's LSTM/GRU layers, from the converted model's ops."""
    layers = facts.get("recurrent") or []
    if not layers:
        return None
    counts = ", ".join(f"{name} x{layers.count(name)}" for name in sorted(set(layers)))
    unrolled = any("unrolled" in change for change in facts.get("changes", []))
    if any(op.startswith(("UNIDIRECTIONAL_SEQUENCE", "BIDIRECTIONAL_SEQUENCE")) for op in ops):
        became = "fused sequence op(s) " + ", ".join(o for o in ops if "SEQUENCE" in o)
    elif "WHILE" in ops:
        became = "a WHILE loop (not the fused op)"
    else:
        became = "plain ops (no WHILE loop, no fused LSTM op)"
    how = "unrolled for the fixed sequence length (--rnn unroll)" if unrolled else "kept (--rnn keep)"
    return f"{counts}: {how}; became {became}"


def conversion_report(
    request: ConversionRequest,
    *,
    source_kind: str,
    facts: dict[str, Any],
    chosen: Candidate,
    candidates: list[Candidate],
    gates: list[Gate],
    reference: bytes | None,
) -> ConversionReport:
    reference_size = len(reference) if reference else facts.get("float32_weight_bytes")
    rows = []
    for c in candidates:
        rows.append(
            CandidateReport(
                mode=c.mode,
                ok=c.ok,
                error=str(c.error) if c.error else ("; ".join(c.gate_failures) or None),
                model_size=len(c.model) if c.model else None,
                size_ratio=round(len(c.model) / reference_size, 4) if c.model and reference_size else None,
                metrics=c.validation.metrics if c.validation else {},
                latency_ms_p50={
                    r.info.name: r.check.latency_ms_p50
                    for r in c.runs
                    if r.check.loads and r.check.latency_ms_p50 is not None
                },
                chosen=c is chosen,
            )
        )
    return ConversionReport(
        source=source_kind,
        io_type=request.io_type if chosen.mode is QuantizationMode.INT8 else None,
        recurrent=recurrent_summary(facts, chosen.ops),
        ops=chosen.ops,
        float_layers=request.float_layers if chosen.mode is QuantizationMode.INT8 else [],
        max_drop={g.metric: str(g).partition("=")[2] for g in gates},
        candidates=rows,
    )
