"""The predict path: input checks, quantization, the interpreter, dequantization, predictions.

The smoke test of an update runs through exactly this code, so what is tested is what serves.
The serving model is one reference to an immutable ``ActiveModel``: switching models swaps that
reference, and a request in flight finishes on the model it started with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import BadInputError, VerifyError
from agent.runtime import LoadedModel, RuntimeChoice, load_model
from agent.store import StoredModel
from protocol.manifest import Manifest, TaskKind, TensorSpec
from protocol.schema import ModelRef
from protocol.tensors import dequantize, quantize

MAX_BATCH = 4096


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str | None
    confidence: float

    def as_json(self) -> dict[str, Any]:
        return {"class": self.index, "label": self.label, "confidence": self.confidence}


@dataclass(frozen=True)
class PredictResult:
    outputs: npt.NDArray[np.float32]
    """The first output, dequantized, batch first."""
    classes: npt.NDArray[np.int64] | None = None
    """Classification: the top class of each instance."""
    confidences: npt.NDArray[np.float32] | None = None
    """Classification: the top class's score of each instance."""
    labels: list[str] | None = None

    def top(self, k: int) -> list[list[Prediction]]:
        """Classification: the ``k`` best classes of each instance, best first."""
        labels = self.labels
        best = np.argsort(-self.outputs, axis=1, kind="stable")[:, :k]
        return [
            [
                Prediction(int(i), labels[i] if labels and i < len(labels) else None, float(row[i]))
                for i in order.tolist()
            ]
            for row, order in zip(self.outputs, best, strict=True)
        ]

    @property
    def predictions(self) -> list[Prediction] | None:
        if self.classes is None or self.confidences is None:
            return None
        labels = self.labels
        return [
            Prediction(int(i), labels[i] if labels and i < len(labels) else None, float(c))
            for i, c in zip(self.classes.tolist(), self.confidences.tolist(), strict=True)
        ]


@dataclass(frozen=True)
class ActiveModel:
    """A loaded model with its manifest: immutable apart from the interpreter's own lock."""

    sha256: str
    manifest: Manifest
    labels: list[str] | None
    loaded: LoadedModel = field(repr=False)
    input_bounds: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = field(
        default=None, repr=False
    )
    """The baseline's per-feature (min, max) of the first flattened input features."""

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.manifest.name, version=self.manifest.version, sha256=self.sha256)

    @property
    def input_spec(self) -> TensorSpec:
        return self.manifest.inputs[0]

    @property
    def output_spec(self) -> TensorSpec:
        return self.manifest.outputs[0]

    @classmethod
    def load(cls, stored: StoredModel, runtime: RuntimeChoice = "auto", threads: int = 1) -> ActiveModel:
        """Load a stored model into a fresh interpreter and check it matches its manifest."""
        loaded = load_model(stored.model, runtime=runtime, threads=threads)
        check_compatible(stored.manifest, loaded)
        bounds = None
        baseline = stored.manifest.baseline
        if baseline is not None and baseline.input_ranges:
            bounds = (
                np.array([r.min for r in baseline.input_ranges], dtype=np.float32),
                np.array([r.max for r in baseline.input_ranges], dtype=np.float32),
            )
        return cls(
            sha256=stored.sha256,
            manifest=stored.manifest,
            labels=stored.labels,
            loaded=loaded,
            input_bounds=bounds,
        )

    def out_of_range(self, batch: npt.NDArray[np.float32]) -> int:
        """Instances with any feature outside the baseline's range (0 without a baseline)."""
        if self.input_bounds is None:
            return 0
        low, high = self.input_bounds
        flat = batch.reshape(len(batch), -1)[:, : len(low)]
        width = flat.shape[1]
        outside = (flat < low[:width]) | (flat > high[:width])
        return int(np.count_nonzero(outside.any(axis=1)))

    def output_counts(self, result: PredictResult) -> npt.NDArray[np.int64] | None:
        """Regression/forecast: the first output value's counts over the baseline's histogram edges."""
        baseline = self.manifest.baseline
        if result.classes is not None or baseline is None or baseline.output_histogram is None:
            return None
        edges = np.asarray(baseline.output_histogram.edges, dtype=np.float64)
        first = result.outputs.reshape(len(result.outputs), -1)[:, 0].astype(np.float64)
        counts, _ = np.histogram(np.clip(first, edges[0], edges[-1]), bins=edges)
        return counts.astype(np.int64)

    def predict(self, batch: npt.NDArray[np.float32]) -> PredictResult:
        """Run a checked float batch (see ``parse_inputs``) and dequantize the first output."""
        pre = self.manifest.preprocessing
        if pre.scale != 1.0 or pre.offset != 0.0:
            batch = ((batch - pre.offset) * pre.scale).astype(np.float32)
        raw = self.loaded.run([quantize(batch, self.input_spec)])
        outputs = dequantize(raw[0], self.output_spec)
        if self.manifest.task == TaskKind.CLASSIFICATION and outputs.ndim == 2:
            classes = np.argmax(outputs, axis=1).astype(np.int64)
            confidences = outputs[np.arange(len(outputs)), classes].astype(np.float32)
            return PredictResult(outputs, classes, confidences, self.labels)
        return PredictResult(outputs=outputs)


def check_compatible(manifest: Manifest, loaded: LoadedModel) -> None:
    """The model's tensors must be the ones the manifest describes (names aside)."""
    if len(manifest.inputs) != 1:
        raise VerifyError(f"the agent serves single-input models; {manifest.name} has {len(manifest.inputs)}")
    for kind, specs, details in (
        ("input", manifest.inputs, loaded.inputs),
        ("output", manifest.outputs, loaded.outputs),
    ):
        if len(specs) != len(details):
            raise VerifyError(f"the manifest lists {len(specs)} {kind}s but the model has {len(details)}")
        for spec, detail in zip(specs, details, strict=True):
            if np.dtype(spec.dtype) != detail.dtype:
                raise VerifyError(
                    f"{kind} {spec.name}: manifest says {spec.dtype}, the model has {detail.dtype}"
                )
            if not _shape_matches(spec.shape[1:], detail.shape[1:]):
                raise VerifyError(
                    f"{kind} {spec.name}: manifest shape {spec.shape} does not match "
                    f"the model's {list(detail.shape)}"
                )


def _shape_matches(expected: list[int], actual: tuple[int, ...] | list[int]) -> bool:
    return len(expected) == len(actual) and all(e in (-1, a) for e, a in zip(expected, actual, strict=True))


def describe_expected(spec: TensorSpec) -> str:
    instance = ["N" if d == -1 else str(d) for d in spec.shape[1:]]
    one = "[" + ", ".join(instance) + "]"
    batch = "[" + ", ".join(["N", *instance]) + "]"
    dtype = "float32" if spec.quantization is not None else spec.dtype
    return f"one instance of shape {one} or a batch of shape {batch}, of finite numbers ({dtype})"


def parse_inputs(value: object, spec: TensorSpec) -> npt.NDArray[np.float32]:
    """JSON ``inputs`` -> a float32 batch of the model's instance shape, or BadInputError."""
    expected = describe_expected(spec)
    if not isinstance(value, list):
        raise BadInputError(f'"inputs" must be a nested list: {expected}')
    try:
        array = np.array(value)
    except ValueError as exc:  # ragged lists
        raise BadInputError(f'"inputs" is ragged (rows of different lengths); expected {expected}') from exc
    if array.dtype.kind not in "iuf":
        raise BadInputError(f'"inputs" must hold only numbers (got {_kind_name(array)}); expected {expected}')
    instance = spec.shape[1:]
    if _shape_matches(instance, array.shape):
        array = array[np.newaxis]
    elif not (
        array.ndim == len(instance) + 1 and _shape_matches(instance, array.shape[1:]) and array.shape[0] >= 1
    ):
        raise BadInputError(f'"inputs" has shape {list(array.shape)}; expected {expected}')
    if array.shape[0] > MAX_BATCH:
        raise BadInputError(f"a batch may hold at most {MAX_BATCH} instances, got {array.shape[0]}")
    batch = array.astype(np.float32)
    if not np.all(np.isfinite(batch)):
        raise BadInputError(
            f'"inputs" holds NaN or infinite values (or numbers too large for float32); expected {expected}'
        )
    return batch


def parse_tensor_body(body: bytes, spec: TensorSpec) -> npt.NDArray[np.float32]:
    """A binary body: little-endian float32 values, one or more instances back to back."""
    instance = [d for d in spec.shape[1:]]
    if any(d == -1 for d in instance):
        raise BadInputError("this model has a variable dimension: send JSON, binary bodies need fixed shapes")
    per = int(np.prod(instance)) if instance else 1
    if len(body) == 0 or len(body) % (4 * per):
        raise BadInputError(
            f"the binary body is {len(body)} bytes; expected a multiple of {4 * per} "
            f"(float32 little-endian instances of shape {instance})"
        )
    count = len(body) // (4 * per)
    if count > MAX_BATCH:
        raise BadInputError(f"a batch may hold at most {MAX_BATCH} instances, got {count}")
    batch = np.frombuffer(body, dtype="<f4").reshape([count, *instance]).astype(np.float32)
    if not np.all(np.isfinite(batch)):
        raise BadInputError("the binary body holds NaN or infinite values")
    return batch


def _kind_name(array: npt.NDArray[Any]) -> str:
    return {"U": "strings", "S": "strings", "b": "booleans", "O": "null or mixed values"}.get(
        array.dtype.kind, str(array.dtype)
    )


class ModelHolder:
    """The serving model: one reference, swapped atomically; waiters can watch for changes."""

    def __init__(self) -> None:
        self._current: ActiveModel | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> ActiveModel | None:
        return self._current

    def swap(self, model: ActiveModel | None) -> ActiveModel | None:
        """Make ``model`` the serving model; return the one it replaced."""
        with self._lock:
            old, self._current = self._current, model
        return old
