"""Phase "validate": each converted mode run in every installed TFLite runtime (one
``converter.validate`` child each, so a runtime that crashes costs only its own check), compared
with the source model on the evaluation set, and checked against the ``--max-drop`` budget.
``edgefleet bundle`` uses ``validate_in`` and ``primary_run`` for its ready-made model too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converter.conversion import ModeOutcome, WorkerOutput, detail, how_it_died
from converter.errors import ModelValidationError
from converter.gates import Gate
from converter.metrics import compare
from converter.request import ConversionRequest, Progress, RequestFacts
from converter.results import Candidate, RuntimeRun
from converter.subproc import run_module
from protocol.manifest import QuantizationMode, RuntimeCheck, TensorSpec
from runtime import RuntimeInfo, RuntimeName, installed_runtimes

EVALUATION_FILE = "evaluation.npz"
SMOKE_FILE = "smoke.npz"


def validate_in(info: RuntimeInfo, model: Path, work: Path, *, timeout: float, tag: str) -> RuntimeRun:
    """Run ``model`` on ``work``'s ``evaluation.npz`` and ``smoke.npz`` in one runtime, in a child."""
    job = {
        "model": str(model),
        "runtime": info.name,
        "evaluation": str(work / EVALUATION_FILE),
        "smoke": str(work / SMOKE_FILE),
    }
    out_dir = work / f"validate-{tag}-{info.name}"
    outcome = run_module("converter.validate", job, out_dir, timeout)
    result = outcome.result
    if outcome.timed_out:
        error = f"{info} did not load and run the model within {timeout:g} s"
    elif result is None:
        error = f"{info} {how_it_died(outcome)} while loading or running the model{detail(outcome)}"
    elif not result.get("loads"):
        error = str(result.get("error"))
    else:
        inputs = [TensorSpec.model_validate(s) for s in result["inputs"]]
        outputs = [TensorSpec.model_validate(s) for s in result["outputs"]]
        with np.load(out_dir / "outputs.npz") as arrays:
            return RuntimeRun(
                info=info,
                check=RuntimeCheck(version=info.version, loads=True, latency_ms_p50=result["latency_ms_p50"]),
                inputs=inputs,
                outputs=outputs,
                eval_outputs=[arrays[f"eval_{j}"] for j in range(len(outputs))],
                smoke_outputs=[arrays[f"smoke_{j}"] for j in range(len(outputs))],
                smoke_inputs=[arrays[f"smoke_in_{i}"] for i in range(len(inputs))],
            )
    return RuntimeRun(info, RuntimeCheck(version=info.version, loads=False, error=error), [], [], None, None)


def write_samples_for_runtime(path: Path, arrays: Sequence[npt.NDArray[Any]]) -> None:
    """The arrays of one role (evaluation, smoke) as the validator reads them: one per model input."""
    np.savez(path, **{f"input_{i}": array for i, array in enumerate(arrays)})


def run_in_runtimes(
    candidate: Candidate, path: Path, work: Path, *, timeout: float, progress: Progress
) -> None:
    """Validate ``candidate``'s model (written at ``path``) in every installed runtime."""
    for info in installed_runtimes():
        progress(f"validating {candidate.mode.value} in {info}...")
        run = validate_in(info, path, work, timeout=timeout, tag=candidate.mode.value)
        candidate.runs.append(run)
        if run.check.loads:
            progress(f"  loads; p50 latency {run.check.latency_ms_p50:.3f} ms per sample")
        else:
            progress(f"  does not load: {run.check.error}")


def measure_all(
    request: ConversionRequest,
    output: WorkerOutput,
    *,
    modes: list[QuantizationMode],
    targets: npt.NDArray[Any],
    gates: list[Gate],
    work: Path,
    progress: Progress,
) -> list[Candidate]:
    """Every asked mode measured, in the order asked."""
    return [
        _measure(
            request, output.modes[mode], output, targets=targets, gates=gates, work=work, progress=progress
        )
        for mode in modes
    ]


def _measure(
    request: ConversionRequest,
    outcome: ModeOutcome,
    output: WorkerOutput,
    *,
    targets: npt.NDArray[Any],
    gates: list[Gate],
    work: Path,
    progress: Progress,
) -> Candidate:
    """Validate one converted mode in every installed runtime and compare it with the source."""
    candidate = Candidate(outcome.mode, outcome.model, outcome.ops, error=outcome.error)
    if outcome.model is None:
        return candidate
    path = work / f"model-{outcome.mode.value}.tflite"
    path.write_bytes(outcome.model)
    run_in_runtimes(candidate, path, work, timeout=request.timeout, progress=progress)
    try:
        candidate.primary = primary_run(request, outcome.mode, candidate.runs)
    except ModelValidationError as exc:
        candidate.error = exc
        return candidate
    candidate.primary_output = matching_output(candidate.primary.outputs, output.facts["output_shapes"][0])
    candidate.validation = compare(
        request.task, output.source_outputs, candidate.primary_eval(), targets, candidate.primary.info.name
    )
    candidate.gate_failures = [f for f in (gate.failure(candidate.validation) for gate in gates) if f]
    return candidate


def matching_output(outputs: list[TensorSpec], source_shape: list[int | None]) -> int:
    """The TFLite output that is the source model's first output (TFLite may order several
    outputs differently): the first whose per-sample shape matches, else the first."""
    for index, spec in enumerate(outputs):
        if list(spec.shape[1:]) == [-1 if d is None else d for d in source_shape[1:]]:
            return index
    return 0


def primary_run(
    request: RequestFacts, mode: QuantizationMode, runs: list[RuntimeRun], *, ready_made: bool = False
) -> RuntimeRun:
    """The run whose outputs go into the manifest: the required runtime, or the first that loads.

    ``ready_made``: the model came as a .tflite (``edgefleet bundle``), so "another --mode" is no
    way out; the advice points at the runtime and the model's maker instead.
    """
    if not runs:
        raise ModelValidationError(
            "no TFLite runtime is installed to validate the model in; install tflite-runtime"
        )
    if request.runtime == "any":
        for run in runs:
            if run.check.loads:
                return run
        errors = "; ".join(f"{run.check.error}" for run in runs)
        raise ModelValidationError(f"the {mode.value} model loads in no installed runtime: {errors}")
    runtime: RuntimeName = request.runtime
    for run in runs:
        if run.info.name == runtime:
            if run.check.loads:
                return run
            others = [r.info.name for r in runs if r.check.loads]
            raise ModelValidationError(
                f"the {mode.value} model does not load in {runtime}, which --runtime requires: "
                f"{run.check.error}; {_advice(mode, others, ready_made)}"
            )
    installed = ", ".join(str(r.info) for r in runs)
    raise ModelValidationError(
        f"--runtime {runtime} is not installed here (installed: {installed}); "
        "install it or choose --runtime any"
    )


def _advice(mode: QuantizationMode, others: Sequence[str], ready_made: bool) -> str:
    if ready_made:
        advice = (
            "re-export it from its source with ops this runtime supports (e.g. convert the source "
            "model with edgefleet convert, which checks every mode in this runtime)"
        )
    elif mode is QuantizationMode.DYNAMIC:
        advice = "use --mode int8 or float16"
    else:
        advice = "try another --mode"
    if others:
        advice += f", or --runtime {others[0]} if the devices run it"
    return advice


def recurrent_int8_warning(
    request: ConversionRequest,
    chosen: Candidate,
    candidates: list[Candidate],
    output: WorkerOutput,
    *,
    work: Path,
    progress: Progress,
) -> str | None:
    """int8 of unrolled LSTM/GRU layers: each time step gets its own quantized tensors and
    requantization ops, so the model can be larger and much slower than float32 (a GRU measured
    2.15x the size and 16-20x the latency in tflite-runtime). Measured against the float32 model
    of the same run (validated here when ``--mode int8`` did not measure it); None when int8 is
    no worse on either count."""
    unrolled = any("unrolled" in change for change in output.facts.get("changes", []))
    if chosen.mode is not QuantizationMode.INT8 or not unrolled or chosen.primary is None:
        return None
    reference = next((c for c in candidates if c.mode is QuantizationMode.NONE and c.primary), None)
    if reference is None:
        outcome = output.modes[QuantizationMode.NONE]
        if outcome.model is None:
            return None
        reference = Candidate(QuantizationMode.NONE, outcome.model, outcome.ops)
        path = work / "model-none.tflite"
        path.write_bytes(outcome.model)
        run_in_runtimes(reference, path, work, timeout=request.timeout, progress=progress)
    assert chosen.model is not None and reference.model is not None
    runtime = chosen.primary.info.name
    size_ratio = len(chosen.model) / len(reference.model)
    int8_ms, float_ms = chosen.latency(runtime), reference.latency(runtime)
    latency_ratio = int8_ms / float_ms if int8_ms and float_ms else None
    if size_ratio <= 1.0 and (latency_ratio is None or latency_ratio <= 1.2):
        return None
    text = (
        f"int8 on unrolled recurrent layers: {size_ratio:.2f}x the size of the float32 model "
        f"({len(chosen.model):,} vs {len(reference.model):,} bytes)"
    )
    if latency_ratio is not None:
        text += f", {latency_ratio:.1f}x its latency in {runtime} ({int8_ms:.3f} vs {float_ms:.3f} ms)"
    return text + "; every unrolled time step is quantized on its own: consider --mode float16 or none"
