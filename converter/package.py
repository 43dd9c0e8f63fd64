"""Phase "package", shared by ``edgefleet convert`` and ``edgefleet bundle``: the chosen model,
its smoke samples and tolerance, baseline statistics and labels assembled into a manifest,
signed and written atomically.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from converter import data as data_mod
from converter.pack import member_files, write_bundle
from converter.request import Progress, RequestFacts
from converter.results import Candidate, RuntimeRun
from protocol.bundle import file_entries, write_samples
from protocol.manifest import (
    BaselineStats,
    ConversionReport,
    Manifest,
    Preprocessing,
    SmokeTest,
    ToolVersions,
)
from protocol.version import __version__

FLOAT_SMOKE_ATOL = 1e-5
"""Smoke tolerance for float outputs: the same flatbuffer in the same runtime is deterministic."""
SAMPLES_MIN_LIMIT = 256 * 1024
SAMPLES_MODEL_SHARE = 0.10
"""``samples.npz`` stays within max(256 KiB, 10 % of model.tflite): fewer samples for big tensors."""


def samples_limit(model_size: int) -> int:
    return max(SAMPLES_MIN_LIMIT, int(model_size * SAMPLES_MODEL_SHARE))


def smoke_count(asked: int, sample_bytes: int, model_size: int) -> int:
    """How many smoke samples to run, from an estimate of one sample's stored bytes; at least
    one. ``fit_samples`` keeps the written file within the limit whatever the estimate said."""
    return max(1, min(asked, samples_limit(model_size) // max(1, sample_bytes)))


def estimated_sample_bytes(inputs: Sequence[npt.NDArray[Any]], output_values: int) -> int:
    """One sample's share of ``samples.npz``: the inputs as they compress (deflate, as
    ``savez_compressed`` does) and ``output_values`` float32 values uncompressed (a bound)."""
    count = max(1, int(inputs[0].shape[0]))
    packed = sum(len(zlib.compress(np.ascontiguousarray(a).tobytes(), 6)) for a in inputs)
    return packed // count + 4 * output_values


@dataclass(frozen=True)
class FittedSamples:
    data: bytes
    """The bytes of ``samples.npz``."""
    count: int
    limit: int


def fit_samples(
    inputs: Sequence[npt.NDArray[Any]], outputs: Sequence[npt.NDArray[Any]], model_size: int
) -> FittedSamples:
    """``samples.npz`` with as many of the samples as fit max(256 KiB, 10 % of the model),
    measured on the compressed file; at least one (then it may be over: the caller warns)."""
    limit = samples_limit(model_size)
    count = int(inputs[0].shape[0])
    data = write_samples(inputs, outputs)
    while len(data) > limit and count > 1:
        # Shrink in proportion to the overshoot (the file's framing is small): few rewrites.
        count = max(1, min(count - 1, count * limit // len(data)))
        data = write_samples([a[:count] for a in inputs], [o[:count] for o in outputs])
    return FittedSamples(data, count, limit)


@dataclass(frozen=True)
class Packaged:
    manifest: Manifest
    key_id: str
    bundle_size: int


def package(  # noqa: PLR0913 - the facts of every phase meet here; keyword-only, called from two places
    request: RequestFacts,
    *,
    chosen: Candidate,
    facts: dict[str, Any],
    baseline: BaselineStats | None,
    labels: list[str] | None,
    conversion: ConversionReport,
    preprocessing: dict[str, Preprocessing],
    signing_key: Ed25519PrivateKey,
    force: bool,
    note: Callable[[str], None],
    warn: Callable[[str], None],
    progress: Progress,
) -> Packaged:
    """Assemble, sign and write the bundle for ``chosen`` (validated: it has a primary run)."""
    primary = chosen.primary
    assert primary is not None and chosen.model is not None
    assert primary.smoke_inputs is not None and primary.smoke_outputs is not None
    fitted = fit_samples(primary.smoke_inputs, primary.smoke_outputs, len(chosen.model))
    ran = len(primary.smoke_inputs[0])
    if len(fitted.data) > fitted.limit:
        warn(
            f"samples.npz holds a single smoke sample in {len(fitted.data):,} bytes, over the "
            f"{fitted.limit:,} byte limit for this model (max of 256 KiB and 10 % of model.tflite): "
            "its tensors are too large to record compactly; every device downloads and stores it"
        )
    elif fitted.count < ran:
        note(
            f"{fitted.count} of the {ran} smoke samples kept: samples.npz stays within {fitted.limit:,} bytes"
        )
    smoke = SmokeTest(samples=fitted.count, atol=smoke_atol(primary, chosen.runs, note))
    labels_text = data_mod.labels_text(labels) if labels is not None else None
    files = member_files(chosen.model, fitted.data, labels_text)
    manifest = _manifest(
        request,
        facts=facts,
        chosen=chosen,
        files=files,
        baseline=baseline,
        smoke=smoke,
        labels=labels,
        conversion=conversion,
        preprocessing=preprocessing,
    )
    progress(f"signing and writing {request.out}")
    _, signature = write_bundle(request.out, manifest, files, signing_key, force)
    return Packaged(manifest, signature.key_id, request.out.stat().st_size)


def smoke_atol(primary: RuntimeRun, runs: list[RuntimeRun], note: Callable[[str], None]) -> float:
    """One quantization step of the coarsest quantized output, 1e-5 for float outputs; widened
    to cover the other runtimes.

    The agent's smoke test runs the samples exactly as they were recorded (``run_samples``, same
    batching), so in the same runtime the outputs are identical; but tflite-runtime and LiteRT
    use different kernels (int8 outputs can differ by several steps), and the manifest carries
    one tolerance for every device that may run the bundle.
    """
    steps = [spec.quantization.scale * 1.001 for spec in primary.outputs if spec.quantization is not None]
    atol = max(steps) if steps else FLOAT_SMOKE_ATOL
    recorded = primary.smoke_outputs
    assert recorded is not None
    for run in runs:
        if run is primary or run.smoke_outputs is None:
            continue
        spread = max(
            float(np.max(np.abs(got - want))) if got.size else 0.0
            for got, want in zip(run.smoke_outputs, recorded, strict=True)
        )
        if spread > atol:
            note(
                f"{run.info} differs from the recorded smoke outputs by up to {spread:.3g}; "
                f"smoke atol widened from {atol:.3g} to cover it"
            )
            atol = spread * 1.5
    return atol


def _manifest(  # noqa: PLR0913 - the manifest's sections, each from its own phase
    request: RequestFacts,
    *,
    facts: dict[str, Any],
    chosen: Candidate,
    files: dict[str, bytes],
    baseline: BaselineStats | None,
    smoke: SmokeTest,
    labels: list[str] | None,
    conversion: ConversionReport,
    preprocessing: dict[str, Preprocessing],
) -> Manifest:
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
        primary_output=chosen.primary.outputs[chosen.primary_output].name,
        preprocessing=preprocessing,
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
