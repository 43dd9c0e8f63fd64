"""``convert(request) -> result``: the whole conversion, as the CLI and other tools call it.

check inputs -> convert every asked mode in a TensorFlow subprocess (``converter.worker``; a
crash or hang costs that mode only) -> validate each candidate in each installed TFLite runtime,
one subprocess each (``converter.validate``) -> compare with the source model and check the
``--max-drop`` budget -> pick (``--mode auto``: the smallest, then fastest, inside the budget) ->
baseline statistics and smoke samples -> manifest -> sign -> write atomically.
This process never imports TensorFlow or a TFLite runtime.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from agent.runtime import RuntimeName, installed_runtimes
from converter import data as data_mod
from converter.baseline import baseline_stats
from converter.errors import AccuracyGateError, ConverterError, InputError, ModelValidationError
from converter.gates import DEFAULT_AUTO_BUDGET, Gate, parse_gates
from converter.images import ImagePreprocessing
from converter.metrics import compare
from converter.pack import check_output_free, member_files, samples_npz, write_bundle
from converter.source import SourceModel, inspect_source
from converter.stages import ModeOutcome, RuntimeRun, WorkerOutput, run_worker, validate_in
from protocol.bundle import file_entries
from protocol.manifest import (
    BaselineStats,
    CandidateReport,
    ConversionReport,
    Manifest,
    QuantizationMode,
    SmokeTest,
    TaskKind,
    ToolVersions,
    ValidationReport,
)
from protocol.schema import ModelName, SemVer
from protocol.signing import load_private_key

RuntimeRequirement = Literal["tflite-runtime", "litert", "any"]
ModeChoice = QuantizationMode | Literal["auto"]
IOType = Literal["int8", "uint8", "float"]
Progress = Callable[[str], None]

FLOAT_SMOKE_ATOL = 1e-5
"""Smoke tolerance for float outputs: the same flatbuffer in the same runtime is deterministic."""

AUTO_MODES = (
    QuantizationMode.NONE,
    QuantizationMode.FLOAT16,
    QuantizationMode.DYNAMIC,
    QuantizationMode.INT8,
    QuantizationMode.INT16X8,
)
EXPERIMENTAL_MODES = frozenset({QuantizationMode.INT16X8})
"""Measured by ``--mode auto`` but never picked by it: ask for them by name."""


class ConversionRequest(BaseModel):
    """Everything one conversion needs; validated at construction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path = Field(
        description="The source model: .keras, .h5, a SavedModel directory, or module:function."
    )
    calibration: Path = Field(
        description=".npz/.npy/.csv or a folder of images: representative inputs for calibration."
    )
    evaluation: Path = Field(description=".npz/.csv with x and y: inputs and labels/targets for validation.")
    mode: ModeChoice
    name: ModelName
    version: SemVer
    task: TaskKind
    key: Path = Field(description="The operator's Ed25519 private key (PEM) that signs the manifest.")
    out: Path = Field(description="Where the .bundle is written.")
    labels: Path | None = Field(default=None, description="labels.txt, one class name per line.")
    description: str = ""
    force: bool = Field(default=False, description="Replace an existing output file.")
    runtime: RuntimeRequirement = Field(
        default="tflite-runtime", description="The runtime the model must load in ('any': at least one)."
    )
    timeout: float = Field(default=300.0, gt=0, description="Seconds allowed for each subprocess step.")
    smoke_samples: int = Field(default=8, ge=1, le=1000)
    io_type: IOType = Field(default="int8", description="Input/output tensor type of an int8 model.")
    max_drop: list[str] = Field(
        default_factory=list, description="Accuracy budget, e.g. accuracy=0.01 or mae=2%."
    )
    rnn: Literal["unroll", "keep"] = Field(
        default="unroll", description="LSTM/GRU: unroll for the fixed sequence length, or keep the loop."
    )
    float_layers: list[str] = Field(default_factory=list, description="int8: layers to keep in float.")
    layer_report: bool = Field(default=True, description="int8 over budget: run the per-layer debugger.")
    image_preprocessing: ImagePreprocessing = Field(
        default="scale01", description="A calibration folder of images: pixels 0..255 to model inputs."
    )

    @classmethod
    def build(cls, **fields: Any) -> ConversionRequest:
        """Construct, turning a schema violation into a one-line InputError."""
        try:
            return cls(**fields)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(f"invalid {where} {first.get('input')!r}: {first['msg']}") from exc


class RequestFacts(Protocol):
    """What the manifest and the runtime choice need from a request (convert's or bundle's)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def task(self) -> TaskKind: ...
    @property
    def description(self) -> str: ...
    @property
    def runtime(self) -> RuntimeRequirement: ...
    @property
    def out(self) -> Path: ...


@dataclass
class Candidate:
    """One converted mode, measured."""

    mode: QuantizationMode
    model: bytes | None
    ops: list[str]
    error: ConverterError | None = None
    runs: list[RuntimeRun] = field(default_factory=list)
    primary: RuntimeRun | None = None
    validation: ValidationReport | None = None
    gate_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.primary is not None and not self.gate_failures

    def latency(self, runtime: str) -> float | None:
        for run in self.runs:
            if run.info.name == runtime and run.check.loads:
                return run.check.latency_ms_p50
        return None


@dataclass(frozen=True)
class ConversionResult:
    request: RequestFacts
    manifest: Manifest
    key_id: str
    model_size: int
    bundle_size: int
    float32_weight_bytes: int | None
    """Bytes of the source model's weights as float32: the fallback reference for the size ratio."""
    seconds: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    """Things the operator should look at (few calibration samples, an accuracy drop)."""
    notes: list[str] = field(default_factory=list)
    """Facts worth knowing that need no action (e.g. a widened smoke tolerance)."""
    float32_model_bytes: int | None = None
    """Size of the float32 .tflite converted in the same run: the reference for the size ratio."""
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def size_ratio(self) -> float | None:
        reference = self.float32_model_bytes or self.float32_weight_bytes
        return self.model_size / reference if reference else None


@dataclass(frozen=True)
class _Inputs:
    source: SourceModel
    calibration: data_mod.Dataset
    evaluation: data_mod.Dataset
    labels: list[str] | None


def _quiet(_: str) -> None:
    pass


def convert(request: ConversionRequest, progress: Progress = _quiet) -> ConversionResult:
    """Run the whole conversion; raise a ``ConverterError`` (or a protocol key error) on failure."""
    started = time.monotonic()
    warnings: list[str] = []
    notes: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        progress(f"warning: {message}")

    auto = request.mode == "auto"
    progress(
        f"checking inputs for {request.name} {request.version} ({request.task.value}, mode {request.mode})"
    )
    check_output_free(request.out, request.force)
    signing_key = load_private_key(request.key)
    gates = parse_gates(
        request.max_drop or ([DEFAULT_AUTO_BUDGET[request.task]] if auto else []), request.task
    )
    if request.float_layers and request.mode not in ("auto", QuantizationMode.INT8):
        raise InputError("--float-layers applies to --mode int8 (or auto) only")
    inputs = _check_inputs(request, warn)
    modes = list(AUTO_MODES) if request.mode == "auto" else [QuantizationMode(request.mode)]
    seconds: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="edgefleet-convert-") as tmp:
        work = Path(tmp)
        np.save(work / "calibration.npy", inputs.calibration.x)
        np.save(work / "evaluation.npy", inputs.evaluation.x)
        smoke_x = inputs.evaluation.x[: request.smoke_samples]
        np.save(work / "smoke.npy", smoke_x)

        # The float32 model is always converted too: it is the reference for the size ratio.
        worker_modes = modes if QuantizationMode.NONE in modes else [*modes, QuantizationMode.NONE]
        progress(
            f"converting to TFLite ({', '.join(m.value for m in worker_modes)}) in a TensorFlow "
            f"subprocess, calibrating on {len(inputs.calibration.x)} samples..."
        )
        output = run_worker(
            _worker_job(request, inputs, work),
            worker_modes,
            work=work,
            timeout=request.timeout,
            calibration_samples=len(inputs.calibration.x),
            progress=progress,
        )
        seconds["convert"] = round(output.seconds, 2)
        facts = output.facts
        output_shape: list[int | None] = facts["output_shapes"][0]
        targets = data_mod.check_targets(inputs.evaluation, request.task, output_shape)
        _check_labels(request, inputs, output_shape)

        validate_started = time.monotonic()
        candidates = []
        for mode in modes:
            candidate = _measure(
                request,
                outcome=output.modes[mode],
                output=output,
                targets=targets,
                gates=gates,
                work=work,
                progress=progress,
            )
            candidates.append(candidate)
        seconds["validate"] = round(time.monotonic() - validate_started, 2)
        reference = output.modes[QuantizationMode.NONE].model
        chosen = _choose(request, candidates, gates, reference)
        if chosen.ok is False:
            report = _failure_report(request, candidates, gates, reference)
            debug = ""
            if chosen.mode is QuantizationMode.INT8 and chosen.gate_failures and request.layer_report:
                progress("int8 is over budget: running TensorFlow's quantization debugger per layer...")
                debug = _layer_report(request, inputs, work)
            raise AccuracyGateError(
                f"mode {chosen.mode.value} is outside the accuracy budget: "
                f"{'; '.join(chosen.gate_failures)}; "
                "try another --mode (or --mode auto), more calibration data, or --float-layers",
                report + debug,
            )
    primary = chosen.primary
    validation = chosen.validation
    assert primary is not None and validation is not None and chosen.model is not None
    assert primary.eval_outputs is not None and primary.smoke_outputs is not None
    baseline = baseline_stats(request.task, inputs.evaluation.x, primary.eval_outputs)
    smoke = SmokeTest(samples=len(smoke_x), atol=_smoke_atol(primary, chosen.runs, notes.append))
    _check_accuracy(request.task, validation, warn)
    for change in facts.get("changes", []):
        notes.append(change)

    files = member_files(
        chosen.model,
        samples_npz(smoke_x, primary.smoke_outputs),
        data_mod.labels_text(inputs.labels) if inputs.labels is not None else None,
    )
    manifest = _manifest(
        request,
        facts=facts,
        chosen=chosen,
        files=files,
        baseline=baseline,
        smoke=smoke,
        labels=inputs.labels,
        conversion=_conversion_report(
            request,
            inputs=inputs,
            facts=facts,
            chosen=chosen,
            candidates=candidates,
            gates=gates,
            reference=reference,
        ),
    )
    progress(f"signing and writing {request.out}")
    _, signature = write_bundle(request.out, manifest, files, signing_key, request.force)
    seconds["total"] = round(time.monotonic() - started, 2)
    return ConversionResult(
        request=request,
        manifest=manifest,
        key_id=signature.key_id,
        model_size=len(chosen.model),
        bundle_size=request.out.stat().st_size,
        float32_weight_bytes=facts.get("float32_weight_bytes"),
        seconds=seconds,
        warnings=warnings,
        notes=notes,
        float32_model_bytes=len(reference) if reference else None,
        candidates=candidates,
    )


def _worker_job(request: ConversionRequest, inputs: _Inputs, work: Path) -> dict[str, Any]:
    return {
        "model": inputs.source.reference,
        "kind": inputs.source.kind.value,
        "calibration": str(work / "calibration.npy"),
        "evaluation": str(work / "evaluation.npy"),
        "io_type": request.io_type,
        "rnn": request.rnn,
        "float_layers": request.float_layers,
    }


def _measure(
    request: ConversionRequest,
    *,
    outcome: ModeOutcome,
    output: WorkerOutput,
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
    dynamic_batch = output.facts["input_shape"][0] is None
    for info in installed_runtimes():
        progress(f"validating {outcome.mode.value} in {info}...")
        run = validate_in(
            info, path, work, dynamic_batch=dynamic_batch, timeout=request.timeout, tag=outcome.mode.value
        )
        candidate.runs.append(run)
        if run.check.loads:
            progress(f"  loads; p50 latency {run.check.latency_ms_p50:.3f} ms per sample")
        else:
            progress(f"  does not load: {run.check.error}")
    try:
        candidate.primary = _primary_run(request, outcome.mode, candidate.runs)
    except ModelValidationError as exc:
        candidate.error = exc
        return candidate
    assert candidate.primary.eval_outputs is not None
    candidate.validation = compare(
        request.task, output.source_outputs, candidate.primary.eval_outputs, targets,
        candidate.primary.info.name,
    )  # fmt: skip
    candidate.gate_failures = [f for f in (gate.failure(candidate.validation) for gate in gates) if f]
    return candidate


def _choose(
    request: ConversionRequest, candidates: list[Candidate], gates: list[Gate], reference: bytes | None
) -> Candidate:
    """The requested mode; for auto the smallest (then fastest) inside the budget."""
    if request.mode != "auto":
        (candidate,) = candidates
        if candidate.error is not None:
            raise candidate.error
        return candidate
    eligible = [c for c in candidates if c.ok and c.mode not in EXPERIMENTAL_MODES]
    if not eligible:
        report = _failure_report(request, candidates, gates, reference)
        raise AccuracyGateError(
            "no mode converts, loads in "
            f"{request.runtime} and stays inside the accuracy budget "
            f"({', '.join(str(g) for g in gates)}); see the table",
            report,
        )
    runtime = request.runtime if request.runtime != "any" else None

    def key(c: Candidate) -> tuple[int, float]:
        assert c.model is not None and c.primary is not None
        latency = c.latency(runtime) if runtime else c.primary.check.latency_ms_p50
        return len(c.model), latency or float("inf")

    best = min(eligible, key=key)
    best_size = key(best)[0]
    # Within 5 % of the smallest size, the fastest wins: a few bytes are not worth a slower model;
    # latencies within 5 % are a tie (host timing noise), broken by size, then by the simpler mode.
    close = [c for c in eligible if key(c)[0] <= best_size * 1.05]
    fastest = min(key(c)[1] for c in close)
    finalists = [c for c in close if key(c)[1] <= fastest * 1.05]
    return min(finalists, key=lambda c: key(c)[0])


def _failure_report(
    request: ConversionRequest, candidates: list[Candidate], gates: list[Gate], reference: bytes | None
) -> str:
    from converter.report import candidates_table

    return candidates_table(
        request.task, candidates, len(reference) if reference else None, gates, chosen=None
    )


def _layer_report(request: ConversionRequest, inputs: _Inputs, work: Path) -> str:
    """Re-run int8 with TensorFlow's quantization debugger; the worst layers as a table."""
    job = {**_worker_job(request, inputs, work), "evaluation": str(work / "smoke.npy"), "debug_int8": True}
    try:
        output = run_worker(
            job,
            [QuantizationMode.INT8],
            work=work / "debug",
            timeout=request.timeout,
            calibration_samples=len(inputs.calibration.x),
            progress=_quiet,
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


def _check_labels(request: ConversionRequest, inputs: _Inputs, output_shape: list[int | None]) -> None:
    if inputs.labels is not None and output_shape[-1] is not None and len(inputs.labels) != output_shape[-1]:
        raise InputError(
            f"{request.labels} holds {len(inputs.labels)} labels but the model has {output_shape[-1]} classes"
        )


def _check_inputs(request: ConversionRequest, warn: Callable[[str], None]) -> _Inputs:
    source = inspect_source(request.model)
    labels = None
    if request.labels is not None:
        if request.task is not TaskKind.CLASSIFICATION:
            raise InputError(f"--labels applies to classification models, not {request.task.value}")
        labels = data_mod.load_labels(request.labels)
    calibration = data_mod.load_data(
        request.calibration,
        "calibration",
        need_y=False,
        input_shape=source.input_shapes[0] if source.input_shapes else None,
        image_preprocessing=request.image_preprocessing,
    )
    evaluation = data_mod.load_data(request.evaluation, "evaluation", need_y=True)
    if source.input_shapes is not None:
        if len(source.input_shapes) != 1:
            raise InputError(
                f"the model has {len(source.input_shapes)} inputs; the converter supports one input for now"
            )
        data_mod.check_against_input(calibration, "calibration", source.input_shapes[0])
        data_mod.check_against_input(evaluation, "evaluation", source.input_shapes[0])
    else:
        data_mod.check_finite(calibration.x, "calibration x")
        data_mod.check_finite(evaluation.x, "evaluation x")
    _check_ranges(calibration, evaluation, warn)
    calibrated = request.mode in ("auto", QuantizationMode.INT8, QuantizationMode.INT16X8)
    if calibrated and len(calibration.x) < data_mod.MIN_CALIBRATION_SAMPLES:
        warn(
            f"only {len(calibration.x)} calibration samples; int8 ranges from fewer than "
            f"{data_mod.MIN_CALIBRATION_SAMPLES} may not cover real inputs"
        )
    if request.smoke_samples > len(evaluation.x):
        raise InputError(
            f"--smoke-samples {request.smoke_samples} is more than the {len(evaluation.x)} evaluation samples"
        )
    return _Inputs(source, calibration, evaluation, labels)


def _check_ranges(
    calibration: data_mod.Dataset, evaluation: data_mod.Dataset, warn: Callable[[str], None]
) -> None:
    """int8 ranges come from the calibration data: evaluation values far outside them get clipped."""
    low, high = float(calibration.x.min()), float(calibration.x.max())
    eval_low, eval_high = float(evaluation.x.min()), float(evaluation.x.max())
    margin = 0.1 * max(high - low, 1e-12)
    if eval_low < low - margin or eval_high > high + margin:
        warn(
            f"evaluation inputs span [{eval_low:.4g}, {eval_high:.4g}] but the calibration data only "
            f"[{low:.4g}, {high:.4g}]: calibrated modes will clip inputs outside it"
        )


def _primary_run(request: RequestFacts, mode: QuantizationMode, runs: list[RuntimeRun]) -> RuntimeRun:
    """The run whose outputs go into the manifest: the required runtime, or the first that loads."""
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
            advice = (
                "use --mode int8 or float16" if mode is QuantizationMode.DYNAMIC else "try another --mode"
            )
            if others:
                advice += f", or --runtime {others[0]} if the devices run it"
            raise ModelValidationError(
                f"the {mode.value} model does not load in {runtime}, which --runtime requires: "
                f"{run.check.error}; {advice}"
            )
    installed = ", ".join(str(r.info) for r in runs)
    raise ModelValidationError(
        f"--runtime {runtime} is not installed here (installed: {installed}); "
        "install it or choose --runtime any"
    )


def _smoke_atol(primary: RuntimeRun, runs: list[RuntimeRun], note: Callable[[str], None]) -> float:
    """One quantization step for quantized outputs, 1e-5 for float; widened to cover other runtimes.

    The same flatbuffer gives the same outputs in the same runtime, but tflite-runtime and LiteRT
    use different kernels (int8 outputs can differ by several steps), and the manifest carries one
    tolerance for every device that may run the bundle.
    """
    quantization = primary.outputs[0].quantization
    atol = quantization.scale * 1.001 if quantization is not None else FLOAT_SMOKE_ATOL
    recorded = primary.smoke_outputs
    assert recorded is not None
    variants = [
        (f"{run.info} (one sample at a time)", run.smoke_outputs) for run in runs if run is not primary
    ]
    variants += [(f"{run.info} (as one batch)", run.smoke_batch_outputs) for run in runs]
    for label, outputs in variants:
        if outputs is None:
            continue
        spread = float(np.max(np.abs(outputs - recorded)))
        if spread > atol:
            note(
                f"{label} differs from the recorded smoke outputs by up to {spread:.3g}; "
                f"smoke atol widened from {atol:.3g} to cover it"
            )
            atol = spread * 1.5
    return atol


def _check_accuracy(task: TaskKind, validation: ValidationReport, warn: Callable[[str], None]) -> None:
    if task is TaskKind.CLASSIFICATION and "accuracy_source" in validation.metrics:
        drop = validation.metrics["accuracy_source"] - validation.metrics["accuracy"]
        if drop > 0.02:
            warn(f"accuracy dropped {drop * 100:.1f} points from the source model")


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


def _conversion_report(
    request: ConversionRequest,
    *,
    inputs: _Inputs,
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
        source=inputs.source.kind.value,
        io_type=request.io_type if chosen.mode is QuantizationMode.INT8 else None,
        recurrent=recurrent_summary(facts, chosen.ops),
        ops=chosen.ops,
        float_layers=request.float_layers if chosen.mode is QuantizationMode.INT8 else [],
        max_drop={g.metric: str(g).partition("=")[2] for g in gates},
        candidates=rows,
    )


def _manifest(
    request: RequestFacts,
    *,
    facts: dict[str, Any],
    chosen: Candidate,
    files: dict[str, bytes],
    baseline: BaselineStats | None,
    smoke: SmokeTest,
    labels: list[str] | None,
    conversion: ConversionReport,
) -> Manifest:
    from edgefleet import __version__

    assert chosen.primary is not None
    versions = {run.info.name: run.info.version for run in chosen.runs}
    return Manifest(
        name=request.name,
        version=request.version,
        task=request.task,
        created_at=datetime.now(UTC),
        description=request.description,
        files=file_entries(files),
        inputs=chosen.primary.inputs,
        outputs=chosen.primary.outputs,
        labels=labels,
        quantization=chosen.mode,
        tools=ToolVersions(
            edgefleet=__version__,
            tensorflow=facts.get("tensorflow"),
            tflite_runtime=versions.get("tflite-runtime"),
            litert=versions.get("litert"),
        ),
        runtimes={run.info.name: run.check for run in chosen.runs},
        validation=chosen.validation,
        baseline=baseline,
        smoke=smoke,
        conversion=conversion,
    )
