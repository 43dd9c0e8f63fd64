"""``convert(request) -> result``: the whole conversion, as the CLI and other tools call it.

check inputs -> convert in a TensorFlow subprocess (``converter.worker``) -> validate in each
installed TFLite runtime, one subprocess each (``converter.validate``) -> compare with the
source model -> baseline statistics and smoke samples -> manifest -> sign -> write atomically.
This process never imports TensorFlow or a TFLite runtime.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from agent.runtime import RuntimeInfo, RuntimeName, installed_runtimes
from converter import data as data_mod
from converter.baseline import baseline_stats
from converter.errors import ConversionError, InputError, ModelValidationError
from converter.metrics import compare
from converter.pack import check_output_free, member_files, samples_npz, write_bundle
from converter.source import SourceModel, inspect_source
from converter.subproc import ChildOutcome, run_module
from protocol.bundle import file_entries
from protocol.manifest import (
    BaselineStats,
    Manifest,
    QuantizationMode,
    RuntimeCheck,
    SmokeTest,
    TaskKind,
    TensorSpec,
    ToolVersions,
    ValidationReport,
)
from protocol.schema import ModelName, SemVer
from protocol.signing import load_private_key

RuntimeRequirement = Literal["tflite-runtime", "litert", "any"]
Progress = Callable[[str], None]

FLOAT_SMOKE_ATOL = 1e-5
"""Smoke tolerance for float outputs: the same flatbuffer in the same runtime is deterministic."""


class ConversionRequest(BaseModel):
    """Everything one conversion needs; validated at construction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path = Field(description="The source model file (.keras).")
    calibration: Path = Field(description=".npz with x: representative inputs for int8 calibration.")
    evaluation: Path = Field(description=".npz with x and y: inputs and labels/targets for validation.")
    mode: QuantizationMode
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

    @classmethod
    def build(cls, **fields: Any) -> ConversionRequest:
        """Construct, turning a schema violation into a one-line InputError."""
        try:
            return cls(**fields)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(f"invalid {where} {first.get('input')!r}: {first['msg']}") from exc


@dataclass(frozen=True)
class ConversionResult:
    request: ConversionRequest
    manifest: Manifest
    key_id: str
    model_size: int
    bundle_size: int
    float32_weight_bytes: int | None
    """Bytes of the source model's weights as float32: the reference for the size ratio."""
    seconds: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    """Things the operator should look at (few calibration samples, an accuracy drop)."""
    notes: list[str] = field(default_factory=list)
    """Facts worth knowing that need no action (e.g. a widened smoke tolerance)."""

    @property
    def size_ratio(self) -> float | None:
        return self.model_size / self.float32_weight_bytes if self.float32_weight_bytes else None


@dataclass(frozen=True)
class _Inputs:
    source: SourceModel
    calibration: data_mod.Dataset
    evaluation: data_mod.Dataset
    labels: list[str] | None


@dataclass(frozen=True)
class _RuntimeRun:
    info: RuntimeInfo
    check: RuntimeCheck
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    eval_outputs: npt.NDArray[np.float32] | None
    smoke_outputs: npt.NDArray[np.float32] | None
    smoke_batch_outputs: npt.NDArray[np.float32] | None = None


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

    progress(
        f"checking inputs for {request.name} {request.version} "
        f"({request.task.value}, mode {request.mode.value})"
    )
    check_output_free(request.out, request.force)
    signing_key = load_private_key(request.key)
    inputs = _check_inputs(request, warn)
    seconds: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="edgefleet-convert-") as tmp:
        work = Path(tmp)
        np.save(work / "calibration.npy", inputs.calibration.x)
        np.save(work / "evaluation.npy", inputs.evaluation.x)
        smoke_x = inputs.evaluation.x[: request.smoke_samples]
        np.save(work / "smoke.npy", smoke_x)

        progress(f"converting to TFLite ({request.mode.value}) in a TensorFlow subprocess...")
        facts = _run_worker(request, inputs, work)
        seconds["convert"] = round(facts["seconds_total"], 2)
        model_bytes = (work / "worker" / "model.tflite").read_bytes()
        source_outputs = np.load(work / "worker" / "source_outputs.npy")
        output_shape: list[int | None] = facts["output_shapes"][0]
        targets = data_mod.check_targets(inputs.evaluation, request.task, output_shape)
        if (
            inputs.labels is not None
            and output_shape[-1] is not None
            and len(inputs.labels) != output_shape[-1]
        ):
            raise InputError(
                f"{request.labels} holds {len(inputs.labels)} labels "
                f"but the model has {output_shape[-1]} classes"
            )

        validate_started = time.monotonic()
        runs = []
        for info in installed_runtimes():
            progress(f"validating in {info}...")
            run = _validate_in(info, work, facts["input_shape"][0] is None, request.timeout)
            runs.append(run)
            if run.check.loads:
                progress(f"  loads; p50 latency {run.check.latency_ms_p50:.3f} ms per sample")
            else:
                progress(f"  does not load: {run.check.error}")
        seconds["validate"] = round(time.monotonic() - validate_started, 2)
    primary = _primary_run(request, runs)
    assert primary.eval_outputs is not None and primary.smoke_outputs is not None

    validation = compare(request.task, source_outputs, primary.eval_outputs, targets, primary.info.name)
    baseline = baseline_stats(request.task, inputs.evaluation.x, primary.eval_outputs)
    smoke = SmokeTest(samples=len(smoke_x), atol=_smoke_atol(primary, runs, notes.append))
    _check_accuracy(request.task, validation, warn)

    files = member_files(
        model_bytes,
        samples_npz(smoke_x, primary.smoke_outputs),
        data_mod.labels_text(inputs.labels) if inputs.labels is not None else None,
    )
    manifest = _manifest(
        request,
        facts=facts,
        primary=primary,
        runs=runs,
        files=files,
        validation=validation,
        baseline=baseline,
        smoke=smoke,
        labels=inputs.labels,
    )
    progress(f"signing and writing {request.out}")
    _, signature = write_bundle(request.out, manifest, files, signing_key, request.force)
    seconds["total"] = round(time.monotonic() - started, 2)
    return ConversionResult(
        request=request,
        manifest=manifest,
        key_id=signature.key_id,
        model_size=len(model_bytes),
        bundle_size=request.out.stat().st_size,
        float32_weight_bytes=facts.get("float32_weight_bytes"),
        seconds=seconds,
        warnings=warnings,
        notes=notes,
    )


def _check_inputs(request: ConversionRequest, warn: Callable[[str], None]) -> _Inputs:
    source = inspect_source(request.model)
    labels = None
    if request.labels is not None:
        if request.task is not TaskKind.CLASSIFICATION:
            raise InputError(f"--labels applies to classification models, not {request.task.value}")
        labels = data_mod.load_labels(request.labels)
    calibration = data_mod.load_npz(request.calibration, "calibration", need_y=False)
    evaluation = data_mod.load_npz(request.evaluation, "evaluation", need_y=True)
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
    if request.mode is QuantizationMode.INT8 and len(calibration.x) < data_mod.MIN_CALIBRATION_SAMPLES:
        warn(
            f"only {len(calibration.x)} calibration samples; int8 ranges from fewer than "
            f"{data_mod.MIN_CALIBRATION_SAMPLES} may not cover real inputs"
        )
    if request.smoke_samples > len(evaluation.x):
        raise InputError(
            f"--smoke-samples {request.smoke_samples} is more than the {len(evaluation.x)} evaluation samples"
        )
    return _Inputs(source, calibration, evaluation, labels)


_LIKELY_CAUSE = {
    QuantizationMode.INT8: "an op without an int8 kernel, or calibration data the model cannot run on; "
    "try --mode float16 or dynamic",
    QuantizationMode.FLOAT16: "an op TFLite cannot express; try --mode none to see if any conversion works",
    QuantizationMode.DYNAMIC: "an op TFLite cannot express; try --mode none to see if any conversion works",
    QuantizationMode.NONE: "a layer or op that TFLite's builtin ops cannot express (custom layers, "
    "unsupported TF ops)",
}


def _run_worker(request: ConversionRequest, inputs: _Inputs, work: Path) -> dict[str, Any]:
    job = {
        "model": str(request.model.resolve()),
        "kind": inputs.source.kind.value,
        "mode": request.mode.value,
        "calibration": str(work / "calibration.npy"),
        "evaluation": str(work / "evaluation.npy"),
    }
    outcome = run_module("converter.worker", job, work / "worker", request.timeout)
    mode = request.mode.value
    result = outcome.result
    if outcome.timed_out:
        raise ConversionError(
            f"conversion in mode {mode} did not finish within {request.timeout:g} s and was stopped; "
            f"a large model or calibration set ({len(inputs.calibration.x)} samples) needs a longer --timeout"
        )
    if result is not None and not result.get("ok"):
        if result.get("kind") == "input":
            raise InputError(str(result.get("message")))
        raise ConversionError(
            f"TensorFlow could not convert the model in mode {mode}: {_first_line(result.get('message'))} "
            f"(likely cause: {_LIKELY_CAUSE[request.mode]})"
        )
    if result is None or outcome.returncode != 0:
        raise ConversionError(
            f"the conversion worker {_how_it_died(outcome)} in mode {mode} "
            f"(likely cause: {_LIKELY_CAUSE[request.mode]}){_detail(outcome)}"
        )
    return {**result, "seconds_total": outcome.seconds}


def _how_it_died(outcome: ChildOutcome) -> str:
    if outcome.signal_name is not None:
        return f"crashed ({outcome.signal_name})"
    return f"failed with exit status {outcome.returncode} and no result"


def _detail(outcome: ChildOutcome) -> str:
    last = outcome.stderr_tail.strip().splitlines()
    return f"; last output: {last[-1].strip()}" if last else ""


def _first_line(message: object) -> str:
    lines = str(message).strip().splitlines()
    return lines[0] if lines else "no message"


def _validate_in(info: RuntimeInfo, work: Path, dynamic_batch: bool, timeout: float) -> _RuntimeRun:
    job = {
        "model": str(work / "worker" / "model.tflite"),
        "runtime": info.name,
        "evaluation": str(work / "evaluation.npy"),
        "smoke": str(work / "smoke.npy"),
        "dynamic_batch": dynamic_batch,
    }
    out_dir = work / f"validate-{info.name}"
    outcome = run_module("converter.validate", job, out_dir, timeout)
    result = outcome.result
    if outcome.timed_out:
        error = f"{info} did not load and run the model within {timeout:g} s"
    elif result is None:
        error = f"{info} {_how_it_died(outcome)} while loading or running the model{_detail(outcome)}"
    elif not result.get("loads"):
        error = str(result.get("error"))
    else:
        outputs = np.load(out_dir / "outputs.npz")
        return _RuntimeRun(
            info=info,
            check=RuntimeCheck(version=info.version, loads=True, latency_ms_p50=result["latency_ms_p50"]),
            inputs=[TensorSpec.model_validate(s) for s in result["inputs"]],
            outputs=[TensorSpec.model_validate(s) for s in result["outputs"]],
            eval_outputs=outputs["eval"],
            smoke_outputs=outputs["smoke"],
            smoke_batch_outputs=outputs["smoke_batch"],
        )
    return _RuntimeRun(info, RuntimeCheck(version=info.version, loads=False, error=error), [], [], None, None)


def _primary_run(request: ConversionRequest, runs: list[_RuntimeRun]) -> _RuntimeRun:
    """The run whose outputs go into the manifest: the required runtime, or the first that loads."""
    mode = request.mode.value
    if not runs:
        raise ModelValidationError(
            "no TFLite runtime is installed to validate the model in; install tflite-runtime"
        )
    if request.runtime == "any":
        for run in runs:
            if run.check.loads:
                return run
        errors = "; ".join(f"{run.check.error}" for run in runs)
        raise ModelValidationError(f"the {mode} model loads in no installed runtime: {errors}")
    runtime: RuntimeName = request.runtime
    for run in runs:
        if run.info.name == runtime:
            if run.check.loads:
                return run
            others = [r.info.name for r in runs if r.check.loads]
            advice = (
                "use --mode int8 or float16"
                if request.mode is QuantizationMode.DYNAMIC
                else "try another --mode"
            )
            if others:
                advice += f", or --runtime {others[0]} if the devices run it"
            raise ModelValidationError(
                f"the {mode} model does not load in {runtime}, which --runtime requires: "
                f"{run.check.error}; {advice}"
            )
    installed = ", ".join(str(r.info) for r in runs)
    raise ModelValidationError(
        f"--runtime {runtime} is not installed here (installed: {installed}); "
        "install it or choose --runtime any"
    )


def _smoke_atol(primary: _RuntimeRun, runs: list[_RuntimeRun], note: Callable[[str], None]) -> float:
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
    if task is TaskKind.CLASSIFICATION:
        drop = validation.metrics["accuracy_source"] - validation.metrics["accuracy"]
        if drop > 0.02:
            warn(f"accuracy dropped {drop * 100:.1f} points from the source model")


def _manifest(
    request: ConversionRequest,
    *,
    facts: dict[str, Any],
    primary: _RuntimeRun,
    runs: list[_RuntimeRun],
    files: dict[str, bytes],
    validation: ValidationReport,
    baseline: BaselineStats,
    smoke: SmokeTest,
    labels: list[str] | None,
) -> Manifest:
    from edgefleet import __version__

    versions = {run.info.name: run.info.version for run in runs}
    return Manifest(
        name=request.name,
        version=request.version,
        task=request.task,
        created_at=datetime.now(UTC),
        description=request.description,
        files=file_entries(files),
        inputs=primary.inputs,
        outputs=primary.outputs,
        labels=labels,
        quantization=request.mode,
        tools=ToolVersions(
            edgefleet=__version__,
            tensorflow=facts.get("tensorflow"),
            tflite_runtime=versions.get("tflite-runtime"),
            litert=versions.get("litert"),
        ),
        runtimes={run.info.name: run.check for run in runs},
        validation=validation,
        baseline=baseline,
        smoke=smoke,
    )
