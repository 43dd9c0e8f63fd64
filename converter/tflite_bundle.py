"""``edgefleet bundle model.tflite``: package a ready-made TFLite model the way ``convert`` does.

No TensorFlow and no source model: the model is read as it is, run in each installed runtime
(one subprocess each), compared with the targets when evaluation data is given (then baseline
statistics are recorded too), and signed. Without evaluation data the smoke samples are random
inputs in the input tensor's range, and the manifest carries no baseline statistics.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from agent.runtime import installed_runtimes
from converter import data as data_mod
from converter.baseline import baseline_stats
from converter.errors import InputError, ModelValidationError
from converter.metrics import compare
from converter.pack import check_output_free, member_files, samples_npz, write_bundle
from converter.pipeline import (
    Candidate,
    ConversionResult,
    Progress,
    RuntimeRequirement,
    _manifest,
    _primary_run,
    _quiet,
    _smoke_atol,
)
from converter.stages import validate_in
from converter.subproc import run_module
from protocol.manifest import ConversionReport, QuantizationMode, SmokeTest, TaskKind, TensorSpec
from protocol.schema import ModelName, SemVer
from protocol.signing import load_private_key
from protocol.tensors import dequantize

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

    @classmethod
    def build(cls, **fields: Any) -> BundleRequest:
        try:
            return cls(**fields)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(f"invalid {where} {first.get('input')!r}: {first['msg']}") from exc


def bundle_tflite(request: BundleRequest, progress: Progress = _quiet) -> ConversionResult:
    started = time.monotonic()
    warnings: list[str] = []
    notes: list[str] = []
    check_output_free(request.out, request.force)
    signing_key = load_private_key(request.key)
    model_bytes = _read_model(request.model)
    labels = data_mod.load_labels(request.labels) if request.labels is not None else None
    evaluation = (
        data_mod.load_data(request.evaluation, "evaluation", need_y=True) if request.evaluation else None
    )
    with tempfile.TemporaryDirectory(prefix="edgefleet-bundle-") as tmp:
        work = Path(tmp)
        path = work / "model.tflite"
        path.write_bytes(model_bytes)
        progress(f"reading the signature of {request.model}...")
        inputs, _ = _inspect(path, work, request.timeout)
        if len(inputs) != 1:
            raise InputError(
                f"{request.model} has {len(inputs)} inputs; edgefleet supports one input for now"
            )
        if evaluation is not None:
            data_mod.check_against_input(evaluation, "evaluation", [None, *inputs[0].shape[1:]])
            x = evaluation.x
        else:
            x = random_inputs(inputs[0], request.smoke_samples)
            notes.append(
                f"no --evaluation: the {len(x)} smoke samples are random inputs; no metrics or baseline"
            )
        if request.smoke_samples > len(x):
            raise InputError(
                f"--smoke-samples {request.smoke_samples} is more than the {len(x)} evaluation samples"
            )
        smoke_x = x[: request.smoke_samples]
        np.save(work / "evaluation.npy", x)
        np.save(work / "smoke.npy", smoke_x)
        mode = request.mode or _MODE_BY_INPUT.get(inputs[0].dtype, QuantizationMode.NONE)
        candidate = Candidate(mode, model_bytes, ops=[])
        for info in installed_runtimes():
            progress(f"validating in {info}...")
            run = validate_in(info, path, work, dynamic_batch=False, timeout=request.timeout, tag="tflite")
            candidate.runs.append(run)
            if run.check.loads:
                progress(f"  loads; p50 latency {run.check.latency_ms_p50:.3f} ms per sample")
            else:
                progress(f"  does not load: {run.check.error}")
    candidate.primary = _primary_run(request, mode, candidate.runs)
    primary = candidate.primary
    assert primary.eval_outputs is not None and primary.smoke_outputs is not None
    baseline = None
    if evaluation is not None:
        output_shape: list[int | None] = list(primary.outputs[0].shape)
        targets = data_mod.check_targets(evaluation, request.task, output_shape)
        candidate.validation = compare(request.task, None, primary.eval_outputs, targets, primary.info.name)
        baseline = baseline_stats(request.task, evaluation.x, primary.eval_outputs)
    if labels is not None and primary.outputs[0].shape[-1] != len(labels):
        raise InputError(
            f"{request.labels} holds {len(labels)} labels "
            f"but the model has {primary.outputs[0].shape[-1]} outputs"
        )
    smoke = SmokeTest(samples=len(smoke_x), atol=_smoke_atol(primary, candidate.runs, notes.append))
    files = member_files(
        model_bytes,
        samples_npz(smoke_x, primary.smoke_outputs),
        data_mod.labels_text(labels) if labels is not None else None,
    )
    manifest = _manifest(
        request,
        facts={},
        chosen=candidate,
        files=files,
        baseline=baseline,
        smoke=smoke,
        labels=labels,
        conversion=ConversionReport(source="tflite"),
    )
    progress(f"signing and writing {request.out}")
    _, signature = write_bundle(request.out, manifest, files, signing_key, request.force)
    return ConversionResult(
        request=request,
        manifest=manifest,
        key_id=signature.key_id,
        model_size=len(model_bytes),
        bundle_size=request.out.stat().st_size,
        float32_weight_bytes=None,
        seconds={"total": round(time.monotonic() - started, 2)},
        warnings=warnings,
        notes=notes,
        candidates=[candidate],
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


def _inspect(path: Path, work: Path, timeout: float) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's input and output tensors, from the first installed runtime that loads it."""
    errors = []
    for info in installed_runtimes():
        job = {"model": str(path), "runtime": info.name, "dynamic_batch": False, "inspect_only": True}
        outcome = run_module("converter.validate", job, work / f"inspect-{info.name}", timeout)
        result = outcome.result
        if result is not None and result.get("loads"):
            return (
                [TensorSpec.model_validate(s) for s in result["inputs"]],
                [TensorSpec.model_validate(s) for s in result["outputs"]],
            )
        errors.append(str(result.get("error")) if result else f"{info} failed on the model")
    raise ModelValidationError(
        f"{path} loads in no installed runtime: {'; '.join(errors) or 'none installed'}"
    )


def random_inputs(spec: TensorSpec, samples: int) -> npt.NDArray[np.float32]:
    """Reproducible inputs over the tensor's range: [0, 1) for float, the full range when quantized."""
    rng = np.random.default_rng(RANDOM_SMOKE_SEED)
    shape = (samples, *spec.shape[1:])
    if spec.quantization is None:
        return rng.random(shape, dtype=np.float32)
    info = np.iinfo(np.dtype(spec.dtype))
    q = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(spec.dtype)
    return dequantize(q, spec).astype(np.float32)
