"""``edgefleet bundle model.tflite``: package a ready-made TFLite model the way ``convert`` does.

No TensorFlow and no source model: the model is read as it is, run in each installed runtime
(one subprocess each, through ``runtime.run_samples`` as a device runs it), compared with the
targets when evaluation data is given (then baseline statistics are recorded too), and packaged
by the same step as ``convert`` (``converter.package``). Every input and output is described in
the manifest and recorded in the smoke samples; metrics, the baseline and the labels use the
primary output (``--primary-output``, default the first). Without evaluation data the smoke
samples are random inputs over each input tensor's range, and the manifest carries no baseline.
A model with several inputs takes its evaluation data as an .npz with ``x_0``, ``x_1``, ... and ``y``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from converter import data as data_mod
from converter.baseline import baseline_stats
from converter.conversion import detail, how_it_died
from converter.errors import InputError, ModelValidationError
from converter.measure import (
    EVALUATION_FILE,
    SMOKE_FILE,
    primary_run,
    run_in_runtimes,
    write_samples_for_runtime,
)
from converter.metrics import compare
from converter.pack import check_output_free
from converter.package import package, smoke_count
from converter.request import Progress, RuntimeRequirement, quiet
from converter.results import Candidate, ConversionResult
from converter.subproc import run_module
from protocol.manifest import ConversionReport, QuantizationMode, TaskKind, TensorSpec
from protocol.schema import ModelName, SemVer
from protocol.signing import load_private_key
from protocol.validation import describe_first_error
from runtime import installed_runtimes

TFLITE_MAGIC = b"TFL3"
RANDOM_SMOKE_SEED = 0

_MODE_BY_INPUT = {
    "int8": QuantizationMode.INT8,
    "uint8": QuantizationMode.INT8,
    "int16": QuantizationMode.INT16X8,
}


class BundleRequest(BaseModel):
    """Everything ``edgefleet bundle`` needs; validated at construction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path = Field(description="The ready-made .tflite model.")
    name: ModelName
    version: SemVer
    task: TaskKind
    key: Path
    out: Path
    evaluation: Path | None = Field(default=None, description="x and y: validation and baseline statistics.")
    mode: QuantizationMode | None = Field(
        default=None, description="How the model was quantized; inferred from its input type when absent."
    )
    labels: Path | None = None
    description: str = ""
    force: bool = False
    runtime: RuntimeRequirement = "tflite-runtime"
    timeout: float = Field(default=300.0, gt=0)
    smoke_samples: int = Field(default=8, ge=1, le=1000)
    primary_output: str | None = Field(
        default=None, description="The output metrics, baseline and health checks use (default: the first)."
    )

    @classmethod
    def build(cls, **fields: Any) -> BundleRequest:
        try:
            return cls(**fields)
        except PydanticValidationError as exc:
            raise InputError(describe_first_error(exc, with_input=True)) from exc


def bundle_tflite(request: BundleRequest, progress: Progress = quiet) -> ConversionResult:
    started = time.monotonic()
    notes: list[str] = []
    check_output_free(request.out, request.force)
    signing_key = load_private_key(request.key)
    model_bytes = _read_model(request.model)
    labels = data_mod.load_labels(request.labels) if request.labels is not None else None
    with tempfile.TemporaryDirectory(prefix="edgefleet-bundle-") as tmp:
        work = Path(tmp)
        path = work / "model.tflite"
        path.write_bytes(model_bytes)
        progress(f"reading the signature of {request.model}...")
        inputs, outputs = _inspect(path, work, request.timeout, request.model)
        primary_output = _primary_output(request, outputs, notes.append)
        if len(inputs) > 1 or len(outputs) > 1:
            notes.append(
                f"{len(inputs)} inputs ({', '.join(s.name for s in inputs)}) and {len(outputs)} outputs "
                f"({', '.join(s.name for s in outputs)}): the smoke samples hold every one"
            )
        x, evaluation = _samples(request, inputs, notes.append)
        count = smoke_count(request.smoke_samples, _sample_bytes(inputs, outputs), len(model_bytes))
        if count < request.smoke_samples:
            notes.append(f"{count} smoke samples instead of {request.smoke_samples}: the tensors are large")
        write_samples_for_runtime(work / EVALUATION_FILE, x)
        write_samples_for_runtime(work / SMOKE_FILE, [a[:count] for a in x])
        mode = request.mode or _MODE_BY_INPUT.get(inputs[0].dtype, QuantizationMode.NONE)
        candidate = Candidate(mode, model_bytes, ops=[], primary_output=primary_output)
        run_in_runtimes(candidate, path, work, timeout=request.timeout, progress=progress)
    candidate.primary = primary_run(request, mode, candidate.runs, ready_made=True)
    primary_spec = candidate.primary.outputs[primary_output]
    baseline = None
    if evaluation is not None:
        targets = data_mod.check_targets(evaluation, request.task, list(primary_spec.shape))
        candidate.validation = compare(
            request.task, None, candidate.primary_eval(), targets, candidate.primary.info.name
        )
        baseline = baseline_stats(request.task, evaluation.x, candidate.primary_eval())
    if labels is not None and primary_spec.shape[-1] != len(labels):
        raise InputError(
            f"{request.labels} holds {len(labels)} labels "
            f"but the model's output {primary_spec.name} has {primary_spec.shape[-1]} values"
        )
    packaged = package(
        request, chosen=candidate, facts={}, baseline=baseline, labels=labels,
        conversion=ConversionReport(source="tflite"), preprocessing=None, signing_key=signing_key,
        force=request.force, note=notes.append, progress=progress,
    )  # fmt: skip
    return ConversionResult(
        request=request,
        manifest=packaged.manifest,
        key_id=packaged.key_id,
        model_size=len(model_bytes),
        bundle_size=packaged.bundle_size,
        float32_weight_bytes=None,
        seconds={"total": round(time.monotonic() - started, 2)},
        notes=notes,
        candidates=[candidate],
    )


def _primary_output(request: BundleRequest, outputs: list[TensorSpec], note: Callable[[str], None]) -> int:
    """The output the metrics, baseline and health checks use: ``--primary-output`` or the first."""
    names = [spec.name for spec in outputs]
    if request.primary_output is None:
        if len(outputs) > 1:
            note(f"metrics, baseline and health checks use the first output, {names[0]} (--primary-output)")
        return 0
    if request.primary_output not in names:
        raise InputError(
            f"--primary-output {request.primary_output}: the model has no such output; "
            f"its outputs are {', '.join(names)}"
        )
    return names.index(request.primary_output)


def _samples(
    request: BundleRequest, inputs: list[TensorSpec], note: Callable[[str], None]
) -> tuple[list[npt.NDArray[Any]], data_mod.Dataset | None]:
    """The evaluation arrays (one per input), and the evaluation data when given."""
    if request.evaluation is None:
        x = [random_inputs(spec, request.smoke_samples) for spec in inputs]
        note(
            f"no --evaluation: the {request.smoke_samples} smoke samples are random inputs; "
            "no metrics or baseline"
        )
        return x, None
    if len(inputs) == 1:
        evaluation = data_mod.load_data(request.evaluation, "evaluation", need_y=True)
        arrays = [evaluation.x]
    else:
        arrays, evaluation = data_mod.load_multi_input_npz(request.evaluation, "evaluation", len(inputs))
    for i, (array, spec) in enumerate(zip(arrays, inputs, strict=True)):
        role = "evaluation" if len(inputs) == 1 else f"evaluation x_{i} (input {spec.name})"
        data_mod.check_against_input(data_mod.Dataset(array, None), role, [None, *spec.shape[1:]])
    if request.smoke_samples > len(arrays[0]):
        raise InputError(
            f"--smoke-samples {request.smoke_samples} is more than the {len(arrays[0])} evaluation samples"
        )
    return arrays, evaluation


def _sample_bytes(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> int:
    """Stored bytes of one smoke sample, uncompressed: inputs in their dtype, outputs as float32."""
    size = sum(int(np.prod([max(d, 1) for d in s.shape[1:]])) * np.dtype(s.dtype).itemsize for s in inputs)
    return size + sum(4 * int(np.prod([max(d, 1) for d in s.shape[1:]])) for s in outputs)


def _read_model(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    try:
        model = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if model[4:8] != TFLITE_MAGIC:
        raise InputError(
            f"{path} is not a TFLite flatbuffer (no TFL3 identifier); convert it with edgefleet convert"
        )
    return model


def _inspect(
    path: Path, work: Path, timeout: float, shown: Path
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's input and output tensors, from the first installed runtime that loads it.

    ``path`` is the working copy in a temporary folder; errors name ``shown``, the user's file.
    """
    errors: dict[str, list[str]] = {}
    for info in installed_runtimes():
        job = {"model": str(path), "runtime": info.name, "inspect_only": True}
        outcome = run_module("converter.validate", job, work / f"inspect-{info.name}", timeout)
        result = outcome.result
        if result is not None and result.get("loads"):
            return (
                [TensorSpec.model_validate(s) for s in result["inputs"]],
                [TensorSpec.model_validate(s) for s in result["outputs"]],
            )
        error = str(result.get("error")) if result else f"{info} {how_it_died(outcome)}{detail(outcome)}"
        # Runtimes often refuse for the same reason: say it once, naming each runtime.
        errors.setdefault(error.removeprefix(f"{info} "), []).append(str(info))
    if not errors:
        raise ModelValidationError(f"no TFLite runtime is installed to read {shown}; install tflite-runtime")
    reasons = "; ".join(f"{' and '.join(names)} {reason}" for reason, names in errors.items())
    raise ModelValidationError(f"{shown} loads in no installed runtime: {reasons}")


def random_inputs(spec: TensorSpec, samples: int) -> npt.NDArray[Any]:
    """Reproducible inputs over the tensor's range: [0, 1) for float, every value of an integer
    tensor (already in its dtype, as ``samples.npz`` stores quantized inputs)."""
    rng = np.random.default_rng(RANDOM_SMOKE_SEED)
    shape = (samples, *(max(d, 1) for d in spec.shape[1:]))
    if np.dtype(spec.dtype).kind == "f":
        return rng.random(shape, dtype=np.float32)
    info = np.iinfo(np.dtype(spec.dtype))
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(spec.dtype)
