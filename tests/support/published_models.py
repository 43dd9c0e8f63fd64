"""Signed bundles of TFLite models shaped like published ones, for the agent's and e2e tests.

The ``.tflite`` files are built by ``tests.support.build_published`` in a TensorFlow subprocess,
once, and kept in a cache folder keyed by the builder's source (a later session reuses them).
The bundles are packed here with the protocol's own functions and ``runtime.run_samples`` (what
the converter does, in miniature). ``expected_outputs`` runs the runtime directly, one sample
per invoke, as the reference the agent's answers must equal.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.bundle import LABELS, MODEL, SAMPLES, bundle_bytes, file_entries
from protocol.manifest import (
    BaselineStats,
    FeatureRange,
    Manifest,
    Preprocessing,
    QuantizationMode,
    SmokeTest,
    TaskKind,
    TensorSpec,
    ToolVersions,
)
from protocol.samples import write_samples
from protocol.signing import sign
from protocol.tensors import dequantize_values
from runtime import RuntimeChoice, load_model, model_specs, prepare_input, run_samples
from tests.support import build_published

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Recipe:
    """How one model is described in its manifest (names, task, preprocessing)."""

    task: TaskKind
    names: dict[str, str] = field(default_factory=dict)
    """Runtime (SignatureDef) name -> the manifest's name."""
    primary_output: str | None = None
    labels: list[str] | None = None
    preprocessing: dict[str, Preprocessing] = field(default_factory=dict)
    quantization: QuantizationMode = QuantizationMode.NONE


RECIPES: dict[str, Recipe] = {
    "detector": Recipe(
        TaskKind.REGRESSION,
        names={"output_0": "boxes", "output_1": "scores"},
        primary_output="scores",
        quantization=QuantizationMode.INT8,
    ),
    "pose": Recipe(
        TaskKind.REGRESSION,
        names={
            "output_0": "heatmaps",
            "output_1": "offsets",
            "output_2": "mask",
            "output_3": "score",
            "output_4": "keypoints",
        },
        primary_output="keypoints",
        preprocessing={"image": Preprocessing(method="in_model", description="the model normalises")},
    ),
    "two_inputs": Recipe(
        TaskKind.CLASSIFICATION,
        names={"output_0": "probabilities"},
        labels=["cat", "dog", "bird", "fish"],
        preprocessing={
            "vector": Preprocessing(
                method="standardize",
                offset=[0.5] * 8,
                scale=[2.0, 2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0],
                description="per-feature mean and 1/std of the training set",
            ),
            "image": Preprocessing(method="scale", scale=1 / 255, offset=0.0, channel_order="rgb"),
        },
    ),
    "gru_forecaster": Recipe(
        TaskKind.FORECAST,
        names={"output_0": "forecast"},
        preprocessing={"series": Preprocessing(method="minmax", offset=-10.0, scale=1 / 20)},
    ),
    "image256": Recipe(
        TaskKind.CLASSIFICATION, names={"output_0": "probabilities"}, labels=list("abcdefghij")
    ),
    "variable_length": Recipe(TaskKind.REGRESSION),
}
"""The published shapes: a fixed-batch-1 int8 detector with boxes and scores; a pose/segmenter
with five outputs, one a 2-D mask; an image plus a feature vector; a batch-1 GRU forecaster; a
256x256x3 float classifier; a sequence model of variable length that fails in the runtime on a
length it cannot fold. ``custom_op`` (a model with an op no runtime has) is packed by
``custom_op_bundle``."""


def _builder_hash() -> str:
    return hashlib.sha256(Path(build_published.__file__).read_bytes()).hexdigest()[:16]


def tflite_models(cache_root: Path) -> Path:
    """The folder with every ``<name>.tflite``, built on first use (a TensorFlow subprocess)."""
    folder = cache_root / f"published-{_builder_hash()}"
    if all((folder / f"{name}.tflite").exists() for name in build_published.MODELS):
        return folder
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.build_published", str(folder)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise AssertionError(f"building the published-like models failed:\n{result.stderr[-3000:]}")
    return folder


def raw_inputs(specs: list[TensorSpec], count: int, seed: int = 0) -> list[npt.NDArray[np.float32]]:
    """Caller-side values for each input: ``count`` instances, in the range its preprocessing
    expects (images 0..255 when scaled by 1/255, the GRU's series around -10..10)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = [count, *(16 if d == -1 else d for d in spec.shape[1:])]  # a variable length: 16
        high = 255.0 if spec.name == "image" and len(spec.shape) == 4 else 1.0
        low = -10.0 if spec.name == "series" else 0.0
        high = 10.0 if spec.name == "series" else high
        arrays.append(rng.uniform(low, high, shape).astype(np.float32))
    return arrays


def preprocess(manifest: Manifest, arrays: list[npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32]]:
    """The manifest's preprocessing written out independently of the agent's code."""
    out = []
    for spec, array in zip(manifest.inputs, arrays, strict=True):
        pre = manifest.preprocessing.get(spec.name)
        if pre is None or pre.method in ("none", "in_model"):
            out.append(array)
        else:
            offset = np.asarray(pre.offset, dtype=np.float32)
            scale = np.asarray(pre.scale, dtype=np.float32)
            out.append(((array - offset) * scale).astype(np.float32))
    return out


def expected_outputs(
    tflite: bytes, manifest: Manifest, arrays: list[npt.NDArray[np.float32]], runtime: RuntimeChoice
) -> list[npt.NDArray[np.float32]]:
    """Every output for raw ``arrays`` from the runtime driven directly: one invoke of the whole
    batch when the model's batch is dynamic, else one invoke per sample; inputs quantized and
    outputs dequantized with the tensors' own parameters."""
    model = load_model(tflite, runtime=runtime)
    ready = [prepare_input(a, d) for a, d in zip(preprocess(manifest, arrays), model.inputs, strict=True)]
    dynamic = all(d.signature[0] == -1 for d in model.inputs)
    batches = [ready] if dynamic else [[a[i : i + 1] for a in ready] for i in range(len(ready[0]))]
    rows: list[list[npt.NDArray[np.float32]]] = []
    with model.lock:
        for batch in batches:
            model.resize([a.shape for a in batch])
            rows.append(
                [
                    dequantize_values(r, str(d.dtype), d.scale, d.zero_point)
                    for r, d in zip(model.invoke(batch), model.outputs, strict=True)
                ]
            )
    return [np.concatenate(column, axis=0) for column in zip(*rows, strict=True)]


def _renamed(spec: TensorSpec, names: dict[str, str]) -> TensorSpec:
    return spec.model_copy(update={"name": names.get(spec.name, spec.name)})


def _sign(manifest: Manifest, files: dict[str, bytes], key: Ed25519PrivateKey) -> bytes:
    manifest_bytes = manifest.model_dump_json(indent=2).encode()
    return bundle_bytes(manifest_bytes, sign(key, manifest_bytes), files)


def published_bundle(folder: Path, name: str, key: Ed25519PrivateKey, version: str = "1.0.0") -> bytes:
    """A signed bundle of ``folder/<name>.tflite`` described by ``RECIPES[name]``."""
    recipe = RECIPES[name]
    tflite = (folder / f"{name}.tflite").read_bytes()
    model = load_model(tflite, runtime="tflite-runtime")
    inputs, outputs = model_specs(model)
    inputs = [_renamed(s, recipe.names) for s in inputs]
    outputs = [_renamed(s, recipe.names) for s in outputs]
    draft: dict[str, Any] = {
        "name": name.replace("_", "-"),
        "version": version,
        "task": recipe.task,
        "created_at": datetime.now(UTC),
        "inputs": inputs,
        "outputs": outputs,
        "primary_output": recipe.primary_output,
        "labels": recipe.labels,
        "preprocessing": recipe.preprocessing,
        "quantization": recipe.quantization,
        "tools": ToolVersions(edgefleet="test"),
    }
    # The manifest before the files exist, for the preprocessing of the samples.
    files_stub = {MODEL: tflite, SAMPLES: b""} | ({LABELS: b""} if recipe.labels else {})
    described = Manifest(**draft, files=file_entries(files_stub), smoke=SmokeTest(samples=1, atol=0))
    dynamic = all(d.signature[0] == -1 for d in model.inputs)
    # As many samples (up to 4) as fit the converter's budget: max(256 KiB, 10 % of the model).
    budget = max(256 * 1024, len(tflite) // 10)
    for count in (4, 2, 1):
        raw = raw_inputs(described.inputs, count, seed=1)
        ready = [prepare_input(a, d) for a, d in zip(preprocess(described, raw), model.inputs, strict=True)]
        samples = write_samples(ready, run_samples(model, ready, dynamic_batch=dynamic))
        if len(samples) <= budget:
            break
    files = {MODEL: tflite, SAMPLES: samples}
    if recipe.labels:
        files[LABELS] = "".join(f"{label}\n" for label in recipe.labels).encode()
    # The first input's range over a few hundred instances, as an evaluation set would give.
    first = raw_inputs(described.inputs[:1], 200, seed=2)[0].reshape(200, -1)
    baseline = BaselineStats(
        samples=len(first),
        input_ranges=[
            FeatureRange(min=float(c.min()), max=float(c.max()), mean=float(c.mean())) for c in first.T[:256]
        ],
    )
    smoke = SmokeTest(samples=len(ready[0]), atol=0.02)
    manifest = Manifest(**draft, files=file_entries(files), baseline=baseline, smoke=smoke)
    return _sign(manifest, files, key)


def custom_op_bundle(folder: Path, key: Ed25519PrivateKey) -> bytes:
    """A bundle whose model uses ``BesselI1e``, an op neither runtime has: described by hand,
    as no runtime can load it to describe it."""
    tflite = (folder / "custom_op.tflite").read_bytes()
    spec = TensorSpec(name="x", shape=[-1, 4], dtype="float32")
    samples = write_samples([np.zeros((1, 4), np.float32)], [np.zeros((1, 4), np.float32)])
    files = {MODEL: tflite, SAMPLES: samples}
    manifest = Manifest(
        name="custom-op",
        version="1.0.0",
        task=TaskKind.REGRESSION,
        created_at=datetime.now(UTC),
        files=file_entries(files),
        inputs=[spec],
        outputs=[spec.model_copy(update={"name": "y"})],
        quantization=QuantizationMode.NONE,
        tools=ToolVersions(edgefleet="test"),
        smoke=SmokeTest(samples=1, atol=0.01),
    )
    return _sign(manifest, files, key)


PUBLISHED_ENV = "EDGEFLEET_TEST_PUBLISHED"
"""A folder written by ``python -m tests.support.build_published``: where TensorFlow cannot run
(the emulated aarch64 stage), the tests use models built on the host."""


@pytest.fixture(scope="session")
def published_folder(request: pytest.FixtureRequest) -> Path:
    """The built ``.tflite`` files (cached in pytest's cache folder between sessions)."""
    if exported := os.environ.get(PUBLISHED_ENV):
        return Path(exported)
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip(f"building these models needs TensorFlow; or set {PUBLISHED_ENV} to a built folder")
    return tflite_models(Path(request.config.cache.mkdir("edgefleet-published")))
