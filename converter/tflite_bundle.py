"""``edgefleet bundle model.tflite``: package a ready-made TFLite model the way ``convert`` does.

No TensorFlow and no source model: the model is read as it is, run in each installed runtime
(one subprocess each, through ``runtime.run_samples`` as a device runs it), compared with the
targets when evaluation data is given (then baseline statistics are recorded too), and packaged
by the same step as ``convert`` (``converter.package``). Every input and output is described in
the manifest and recorded in the smoke samples; metrics, the baseline and the labels use the
primary output (``--primary-output``, default the first). Without evaluation data the smoke
samples are random model inputs over each input tensor's range, made to compress (values on a
grid of 256 levels, constant over blocks of the spatial axes) so that ``samples.npz`` stays
small, and the manifest carries no baseline. A model with several inputs takes its evaluation
data as an .npz with ``x_0``, ``x_1``, ... and ``y``. Preprocessing (``--preprocessing-file``
per input name, or the simple flags for a single-input model) is recorded per input; the
evaluation data are then raw values, put through ``runtime.preprocess`` as the agent will.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field
from pydantic import ValidationError as PydanticValidationError

from converter import data as data_mod
from converter import preprocessing
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
from converter.package import estimated_sample_bytes, package, samples_limit, smoke_count
from converter.request import PreprocessingOptions, Progress, RuntimeRequirement, quiet
from converter.results import Candidate, ConversionResult
from converter.subproc import run_module
from protocol.manifest import ConversionReport, Preprocessing, QuantizationMode, TaskKind, TensorSpec
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


class BundleRequest(PreprocessingOptions):
    """Everything ``edgefleet bundle`` needs; validated at construction."""

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
    input_stats: bool = True
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
    warnings: list[str] = []
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
        limit = samples_limit(len(model_bytes))
        raw, evaluation = _samples(request, inputs, limit)
        recorded = _preprocessing(request, inputs)
        # Evaluation data are raw values: through the recorded preprocessing as a device does it.
        # Random samples are model inputs already.
        x = raw
        if evaluation is not None:
            x = [preprocessing.apply(recorded.get(s.name), a) for s, a in zip(inputs, raw, strict=True)]
        asked = min(request.smoke_samples, len(x[0]))
        outputs_size = sum(int(np.prod([max(d, 1) for d in s.shape[1:]])) for s in outputs)
        estimate = estimated_sample_bytes([a[:asked] for a in x], outputs_size)
        count = smoke_count(asked, estimate, len(model_bytes))
        if count < asked:
            notes.append(f"{count} smoke samples run instead of {asked}: the tensors are large")
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
        # The baseline's input ranges are the raw values callers send (the agent checks them so).
        baseline = baseline_stats(
            request.task, raw[0], candidate.primary_eval(), input_features=request.input_stats
        )
    if labels is not None and primary_spec.shape[-1] != len(labels):
        raise InputError(
            f"{request.labels} holds {len(labels)} labels "
            f"but the model's output {primary_spec.name} has {primary_spec.shape[-1]} values"
        )
    packaged = package(
        request, chosen=candidate, facts={}, baseline=baseline, labels=labels,
        conversion=ConversionReport(source="tflite"), preprocessing=recorded, signing_key=signing_key,
        force=request.force, note=notes.append, warn=warnings.append, progress=progress,
    )  # fmt: skip
    if evaluation is None:
        kept = packaged.manifest.smoke.samples
        notes.append(
            f"no --evaluation: the {kept} smoke sample{'s' if kept != 1 else ''} recorded are random "
            "model inputs; no metrics or baseline"
        )
    return ConversionResult(
        request=request,
        manifest=packaged.manifest,
        key_id=packaged.key_id,
        model_size=len(model_bytes),
        bundle_size=packaged.bundle_size,
        float32_weight_bytes=None,
        seconds={"total": round(time.monotonic() - started, 2)},
        warnings=warnings,
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
    request: BundleRequest, inputs: list[TensorSpec], limit: int
) -> tuple[list[npt.NDArray[Any]], data_mod.Dataset | None]:
    """The evaluation arrays as given (one per input), and the evaluation data when given; else
    random model inputs for the smoke test, compressible to about ``limit`` bytes."""
    if request.evaluation is None:
        budget = limit // max(1, len(inputs))
        return [random_inputs(spec, request.smoke_samples, budget) for spec in inputs], None
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


def _preprocessing(request: BundleRequest, inputs: list[TensorSpec]) -> dict[str, Preprocessing]:
    """What to record per input name; standardize/minmax without values are refused here (a
    ready-made model's statistics are the ones it was trained with, not the evaluation set's)."""
    names = [spec.name for spec in inputs]
    return preprocessing.resolve_inputs(
        request.preprocessing_flags,
        request.preprocessing_file,
        names,
        [None] * len(names),
        features=[spec.shape[-1] if len(spec.shape) > 1 else None for spec in inputs],
    )


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


def random_inputs(spec: TensorSpec, samples: int, budget: int) -> npt.NDArray[Any]:
    """Reproducible inputs over the tensor's range that compress: 256 levels ([0, 1) in steps of
    1/256 for float, exact in float32; the integer range in 256 steps, every value of an int8 or
    uint8 tensor, already in its dtype as ``samples.npz`` stores quantized inputs), constant over
    blocks of the spatial axes, the blocks as small as ``budget`` bytes for all samples allow.

    Uniform float32 noise does not compress: one 256x256x3 sample was 786 KB in ``samples.npz``."""
    rng = np.random.default_rng(RANDOM_SMOKE_SEED)
    shape = [max(d, 1) for d in spec.shape[1:]]
    # Colour channels (a short last axis of a 2-D+ instance) stay whole; every other axis is blocked.
    blocked = [i for i in range(len(shape)) if not (len(shape) > 1 and i == len(shape) - 1 and shape[i] <= 4)]
    block = 1
    # About two stored bytes per random value: grow the blocks until the coarse values fit.
    while samples * _coarse_size(shape, blocked, block) * 2 > budget and any(
        shape[i] > block for i in blocked
    ):
        block *= 2
    coarse = [-(-d // block) if i in blocked else d for i, d in enumerate(shape)]
    levels = rng.integers(0, 256, size=(samples, *coarse))
    for i in blocked:
        levels = np.repeat(levels, block, axis=i + 1)
    levels = levels[(slice(None), *(slice(0, d) for d in shape))]
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return (levels / 256.0).astype(dtype)
    if dtype.kind == "b":
        return (levels % 2).astype(dtype)
    info = np.iinfo(dtype)
    step = (int(info.max) - int(info.min)) // 255
    return (int(info.min) + levels.astype(np.int64) * step).astype(dtype)


def _coarse_size(shape: list[int], blocked: list[int], block: int) -> int:
    return int(np.prod([-(-d // block) if i in blocked else d for i, d in enumerate(shape)]))
