"""Phase "convert": every asked mode converted in a TensorFlow subprocess (``converter.worker``).

A mode that crashes or hangs costs that mode only (the rest go on in a new worker); every
failure becomes a typed ``ConversionError`` that names the mode and the likely cause.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converter import worker
from converter.errors import ConversionError, ConverterError, InputError, UnsupportedOpsError
from converter.inputs import Inputs
from converter.request import ConversionRequest, Progress, quiet
from converter.source import SourceModel
from converter.subproc import ChildOutcome, run_module
from protocol.manifest import QuantizationMode

LIKELY_CAUSE = {
    QuantizationMode.INT8: "an op without an int8 kernel, or calibration data the model cannot run on; "
    "try --mode float16 or dynamic",
    QuantizationMode.INT16X8: "an op without an int16x8 kernel (the mode is experimental); try --mode int8",
    QuantizationMode.FLOAT16: "an op TFLite cannot express; try --mode none to see if any conversion works",
    QuantizationMode.DYNAMIC: "an op TFLite cannot express; try --mode none to see if any conversion works",
    QuantizationMode.NONE: "a layer or op that TFLite's builtin ops cannot express (custom layers, "
    "unsupported TF ops)",
}
RECURRENT_CAUSE = (
    "Keras 3 {layers} kept as a WHILE loop (--rnn keep): TensorFlow 2.21 crashes calibrating it; "
    "use --rnn unroll (the default) or a float mode"
)


@dataclass
class ModeOutcome:
    mode: QuantizationMode
    model: bytes | None = None
    ops: list[str] = field(default_factory=list)
    error: ConversionError | None = None
    seconds: float = 0.0


@dataclass
class WorkerOutput:
    facts: dict[str, Any]
    source_outputs: npt.NDArray[np.float32]
    modes: dict[QuantizationMode, ModeOutcome]
    seconds: float
    debug: dict[str, Any] | None = None


def worker_job(request: ConversionRequest, source: SourceModel, work: Path) -> dict[str, Any]:
    """The worker's job file, pointing at the arrays ``write_worker_arrays`` left in ``work``."""
    return {
        "model": source.reference,
        "kind": source.kind.value,
        "calibration": str(work / "calibration.npy"),
        "evaluation": str(work / "evaluation.npy"),
        "io_type": request.io_type,
        "rnn": request.rnn,
        "float_layers": request.float_layers,
        "work": str(work),
        "strip_head": source.strip_head,
    }


def write_worker_arrays(inputs: Inputs, work: Path) -> None:
    """The data as the worker reads it (``worker_job`` points at these files)."""
    np.save(work / "calibration.npy", inputs.calibration.x)
    np.save(work / "evaluation.npy", inputs.evaluation.x)


def convert_modes(
    request: ConversionRequest,
    source: SourceModel,
    inputs: Inputs,
    modes: list[QuantizationMode],
    *,
    work: Path,
    progress: Progress,
) -> WorkerOutput:
    """Convert ``modes``, and always float32 too: the reference for the size ratio."""
    worker_modes = modes if QuantizationMode.NONE in modes else [*modes, QuantizationMode.NONE]
    calibrating = [m for m in worker_modes if m in (QuantizationMode.INT8, QuantizationMode.INT16X8)]
    how = f", calibrating on {len(inputs.calibration.x)} samples" if calibrating else ""
    progress(
        f"converting to TFLite ({', '.join(m.value for m in worker_modes)}) in a TensorFlow "
        f"subprocess{how}..."
    )
    return run_worker(
        worker_job(request, source, work),
        worker_modes,
        work=work,
        timeout=request.timeout,
        calibration_samples=len(inputs.calibration.x),
        progress=progress,
    )


def layer_report(request: ConversionRequest, source: SourceModel, inputs: Inputs, work: Path) -> str:
    """Re-run int8 with TensorFlow's quantization debugger; the worst layers as a table."""
    np.save(work / "debug.npy", inputs.evaluation.x[: request.smoke_samples])
    job = {**worker_job(request, source, work), "evaluation": str(work / "debug.npy"), "debug_int8": True}
    try:
        output = run_worker(
            job,
            [QuantizationMode.INT8],
            work=work / "debug",
            timeout=request.timeout,
            calibration_samples=len(inputs.calibration.x),
            progress=quiet,
        )
    except ConverterError as exc:
        return f"\nthe per-layer report failed: {exc}"
    if not output.debug or not output.debug.get("layers"):
        return "\nthe per-layer report found no quantized layers"
    lines = ["", "worst int8 layers (TensorFlow quantization debugger, RMSE / scale; 0.29 is ideal rounding)"]
    for row in output.debug["layers"]:
        lines.append(f"  {row['rmse_over_scale']:>8.3f}  {row['op']:<24} {row['tensor']}")
    lines.append(
        "keep the worst in float with --float-layers NAME[,NAME] (the layer names in the tensor names)"
    )
    return "\n".join(lines)


def run_worker(
    job: dict[str, Any],
    modes: list[QuantizationMode],
    *,
    work: Path,
    timeout: float,
    calibration_samples: int,
    progress: Progress,
) -> WorkerOutput:
    """Convert every mode; a mode that crashes or hangs is recorded and the rest go on in a new worker."""
    remaining = list(modes)
    outcomes: dict[QuantizationMode, ModeOutcome] = {}
    facts: dict[str, Any] | None = None
    source_dir: Path | None = None
    seconds = 0.0
    debug = None
    attempt = 0
    while remaining:
        out_dir = work / f"worker-{attempt}"
        attempt += 1
        child_job = {**job, "modes": [m.value for m in remaining]}
        limit = timeout * len(remaining)
        outcome = run_module("converter.worker", child_job, out_dir, limit)
        seconds += outcome.seconds
        result = outcome.result
        if result is not None and not result.get("ok") and result.get("kind") == "input":
            raise InputError(str(result.get("message")))
        facts_path = out_dir / worker.FACTS_FILE
        if not facts_path.is_file():  # died before the model was loaded: every mode would
            _raise_for_startup(outcome, remaining[0], timeout, calibration_samples)
        facts = json.loads(facts_path.read_text())
        if (out_dir / worker.SOURCE_OUTPUTS_FILE).is_file():
            source_dir = out_dir
        current_path = out_dir / worker.CURRENT_FILE
        current = current_path.read_text().strip() if current_path.is_file() else None
        for mode in remaining:
            path = out_dir / worker.mode_file(mode.value)
            if path.is_file():
                outcomes[mode] = _mode_outcome(mode, json.loads(path.read_text()), out_dir, facts)
                progress(_mode_line(outcomes[mode]))
        if (out_dir / worker.DEBUG_FILE).is_file():
            debug = json.loads((out_dir / worker.DEBUG_FILE).read_text())
        if current is not None and QuantizationMode(current) not in outcomes:
            mode = QuantizationMode(current)
            outcomes[mode] = ModeOutcome(
                mode, error=_died(outcome, mode, timeout, calibration_samples, facts)
            )
            progress(_mode_line(outcomes[mode]))
        left = [m for m in remaining if m not in outcomes]
        if left and current is None:
            raise ConversionError(
                f"the conversion worker stopped before converting {', '.join(m.value for m in left)}"
                f"{detail(outcome)}"
            )
        remaining = left
    assert facts is not None and source_dir is not None
    source = np.load(source_dir / worker.SOURCE_OUTPUTS_FILE)
    return WorkerOutput(facts, source, outcomes, seconds, debug)


def _mode_line(outcome: ModeOutcome) -> str:
    if outcome.error is None and outcome.model is not None:
        return f"  {outcome.mode.value}: converted, {len(outcome.model):,} bytes"
    return f"  {outcome.mode.value}: failed: {outcome.error}"


def _mode_outcome(
    mode: QuantizationMode, result: dict[str, Any], out_dir: Path, facts: dict[str, Any]
) -> ModeOutcome:
    if result.get("ok"):
        model = (out_dir / worker.model_file(mode.value)).read_bytes()
        return ModeOutcome(mode, model=model, ops=list(result["ops"]), seconds=float(result["seconds"]))
    kind = result.get("kind")
    message = str(result.get("message"))
    error: ConversionError
    if kind == "select_ops":
        ops = ", ".join(result.get("ops", []))
        error = UnsupportedOpsError(
            f"mode {mode.value}: the model needs TensorFlow ops that TFLite's builtin ops cannot express "
            f"and the agent's runtimes cannot run (SELECT_TF_OPS is never enabled): {ops}; "
            "replace them in the model"
        )
    elif kind == "recurrent":
        layers = "/".join(sorted(set(facts.get("recurrent", [])))) or "recurrent layers"
        error = ConversionError(
            f"TensorFlow could not convert the model in mode {mode.value}: its {layers} layers became "
            "tensor-list ops that TFLite cannot lower without SELECT_TF_OPS (likely cause: a Keras 3 RNN "
            "with a dynamic batch kept as a loop); use --rnn unroll (the default)"
        )
    else:
        error = ConversionError(
            f"TensorFlow could not convert the model in mode {mode.value}: {_first_line(message)} "
            f"(likely cause: {LIKELY_CAUSE[mode]})"
        )
    return ModeOutcome(mode, error=error)


def _raise_for_startup(
    outcome: ChildOutcome, mode: QuantizationMode, timeout: float, calibration_samples: int
) -> None:
    result = outcome.result
    if result is not None and not result.get("ok") and not outcome.timed_out:
        raise ConversionError(
            f"TensorFlow could not convert the model in mode {mode.value}: "
            f"{_first_line(result.get('message'))} (likely cause: {LIKELY_CAUSE[mode]})"
        )
    raise _died(outcome, mode, timeout, calibration_samples, None)


def _died(
    outcome: ChildOutcome,
    mode: QuantizationMode,
    timeout: float,
    calibration_samples: int,
    facts: dict[str, Any] | None,
) -> ConversionError:
    if outcome.timed_out:
        return ConversionError(
            f"conversion in mode {mode.value} did not finish within {timeout:g} s and was stopped; "
            f"a large model or calibration set ({calibration_samples} samples) needs a longer --timeout"
        )
    recurrent = (facts or {}).get("recurrent") or []
    changes = " ".join((facts or {}).get("changes") or [])
    calibrated = mode in (QuantizationMode.INT8, QuantizationMode.INT16X8)
    if recurrent and calibrated and "unrolled" not in changes:
        cause = RECURRENT_CAUSE.format(layers="/".join(sorted(set(recurrent))))
    else:
        cause = LIKELY_CAUSE[mode]
    return ConversionError(
        f"the conversion worker {how_it_died(outcome)} in mode {mode.value} "
        f"(likely cause: {cause}){detail(outcome)}"
    )


def how_it_died(outcome: ChildOutcome) -> str:
    if outcome.signal_name is not None:
        return f"crashed ({outcome.signal_name})"
    return f"failed with exit status {outcome.returncode} and no result"


def detail(outcome: ChildOutcome) -> str:
    return f"; last output: {outcome.last_words}" if outcome.last_words else ""


def _first_line(message: object) -> str:
    lines = str(message).strip().splitlines()
    return lines[0] if lines else "no message"
