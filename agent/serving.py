"""The serving model: preprocessing, the runtime's ``run_samples``, every output, predictions.

The smoke test and the probation checks of an update run through exactly this code, so what
is tested is what serves. The serving model is one reference to an immutable ``ActiveModel``:
switching models swaps that reference, and a request in flight finishes on the model it
started with. Requests are parsed in ``agent.predict_io``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.drift import FeatureBatch
from agent.errors import BadInputError, VerifyError
from agent.store import StoredModel
from protocol.features import padded_edges, summarize
from protocol.manifest import Manifest, TaskKind, TensorSpec
from protocol.samples import SmokeSamples
from protocol.schema import ModelRef
from runtime import (
    InputMismatchError,
    InputTransform,
    LoadedModel,
    RuntimeChoice,
    TensorDetail,
    compare_outputs,
    load_model,
    run_samples,
)

MAX_CHUNK = 256
"""Instances per invoke for a dynamic-batch model: bounds the interpreter's arena."""

OUT_OF_RANGE_MARGIN = 0.1
"""An input feature is "far" outside the baseline when it passes the recorded min/max by more
than this share of the recorded range (the evaluation set's extremes are not hard limits)."""


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str | None
    confidence: float

    def as_json(self) -> dict[str, Any]:
        return {"class": self.index, "label": self.label, "confidence": self.confidence}


@dataclass(frozen=True)
class PredictResult:
    names: list[str]
    """Output names, in the manifest's order."""
    tensors: list[npt.NDArray[np.float32]]
    """Every output, dequantized, batch first."""
    primary: int = 0
    """Index of the output the conveniences (classes, histograms) are computed from."""
    classes: npt.NDArray[np.int64] | None = None
    """Classification: the top class of each instance."""
    confidences: npt.NDArray[np.float32] | None = None
    """Classification: the top class's score of each instance."""
    labels: list[str] | None = None
    out_of_range: list[int] = field(default_factory=list)
    """Instances with an input feature far outside the baseline's recorded range."""
    invoke_ms: float | None = None
    """The model's own time for this request, per instance: wall time inside the runtime
    (``run_samples``: input quantization, every invoke, dequantization) once the request's turn
    at the interpreter came, divided by the instances (see ``ActiveModel.predict``)."""
    cpu_ms: float | None = None
    """The serving thread's CPU time over the same span, per instance (``time.thread_time``; an
    interpreter with several threads also works in threads not counted here)."""

    @property
    def outputs(self) -> npt.NDArray[np.float32]:
        """The primary output."""
        return self.tensors[self.primary]

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
    dynamic_batch: bool = False
    """The model (and its manifest) let the batch be resized; else it runs in chunks of its
    fixed batch and is never resized."""
    preprocess: tuple[InputTransform | None, ...] = ()
    """Per input, the manifest's preprocessing (``runtime.preprocess``, as the converter validated)."""
    input_bounds: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = field(
        default=None, repr=False
    )
    """The first input's per-feature bounds (baseline range plus margin), flattened features."""
    feature_mean: npt.NDArray[np.float64] | None = field(default=None, repr=False, compare=False)
    """The baseline's summary-feature means (``protocol.features``); None: no input drift tests."""
    feature_edges: npt.NDArray[np.float64] | None = field(default=None, repr=False, compare=False)
    """The baseline's decile edges per summary feature, padded (``protocol.features.padded_edges``)."""
    turn: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """One request at a time at the interpreter. Requests wait here, outside the invoke timer,
    so the invoke time is the model's and not the queue's (the runtime's own lock, taken inside
    ``run_samples``, is then never contended)."""

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.manifest.name, version=self.manifest.version, sha256=self.sha256)

    @property
    def input_spec(self) -> TensorSpec:
        return self.manifest.inputs[0]

    @property
    def output_spec(self) -> TensorSpec:
        return self.manifest.outputs[self.manifest.primary_output_index]

    @property
    def fixed_batch(self) -> int | None:
        return None if self.dynamic_batch else self.loaded.inputs[0].shape[0]

    def takes_floats(self, position: int) -> bool:
        """Whether callers send real values for this input (float or quantized tensors)."""
        detail = self.loaded.inputs[position]
        return detail.dtype.kind == "f" or detail.quantized

    @classmethod
    def load(cls, stored: StoredModel, runtime: RuntimeChoice = "auto", threads: int = 1) -> ActiveModel:
        """Load a stored model into a fresh interpreter and check it matches its manifest."""
        loaded = load_model(stored.model, runtime=runtime, threads=threads)
        manifest = stored.manifest
        check_compatible(manifest, loaded)
        dynamic = all(
            d.signature[0] == -1 and s.fixed_batch is None
            for d, s in zip(loaded.inputs, manifest.inputs, strict=True)
        )
        return cls(
            sha256=stored.sha256,
            manifest=manifest,
            labels=stored.labels,
            loaded=loaded,
            dynamic_batch=dynamic,
            preprocess=tuple(InputTransform.of(manifest.preprocessing.get(s.name)) for s in manifest.inputs),
            input_bounds=_bounds(manifest),
            feature_mean=_feature_mean(manifest),
            feature_edges=_feature_edges(manifest),
        )

    def out_of_range_instances(self, first_input: npt.NDArray[Any]) -> list[int]:
        """Instances with any feature far outside the baseline's range ([] without a baseline)."""
        if self.input_bounds is None or first_input.dtype.kind != "f":
            return []
        low, high = self.input_bounds
        flat = first_input.reshape(len(first_input), -1)[:, : len(low)]
        width = flat.shape[1]
        outside = (flat < low[:width]) | (flat > high[:width])
        return [int(i) for i in np.flatnonzero(outside.any(axis=1))]

    def input_features(self, first_input: npt.NDArray[Any]) -> FeatureBatch | None:
        """The first input's summary features for the window's drift tests (None without feature
        statistics, or for an input they do not describe)."""
        baseline = self.manifest.baseline
        edges, mean = self.feature_edges, self.feature_mean
        if edges is None or mean is None or baseline is None or baseline.input_features is None:
            return None
        if first_input.dtype.kind != "f":
            return None
        summary = summarize(first_input, baseline.input_features.values)
        return None if summary is None else FeatureBatch(summary, mean, edges)

    def output_counts(self, result: PredictResult) -> npt.NDArray[np.int64] | None:
        """Regression/forecast: the primary output's first value counted over the baseline's
        histogram edges."""
        baseline = self.manifest.baseline
        if result.classes is not None or baseline is None or baseline.output_histogram is None:
            return None
        edges = np.asarray(baseline.output_histogram.edges, dtype=np.float64)
        first = result.outputs.reshape(len(result.outputs), -1)[:, 0].astype(np.float64)
        counts, _ = np.histogram(np.clip(first, edges[0], edges[-1]), bins=edges)
        return counts.astype(np.int64)

    def predict(self, inputs: npt.NDArray[Any] | Sequence[npt.NDArray[Any]]) -> PredictResult:
        """Run checked batches (one per input, see ``agent.predict_io``): real values get the
        manifest's preprocessing and are quantized by the runtime; every output comes back.

        Raises ``BadInputError`` for arrays the model cannot take and ``runtime.InvokeError``
        when the runtime fails (the interpreter is ready again afterwards)."""
        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
        out_of_range = self.out_of_range_instances(arrays[0]) if arrays else []
        ready = [self._preprocessed(i, a) for i, a in enumerate(arrays)]
        try:
            with self.turn:
                wall, cpu = time.perf_counter(), time.thread_time()
                tensors = run_samples(
                    self.loaded, ready, dynamic_batch=self.dynamic_batch, max_chunk=MAX_CHUNK
                )
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        except InputMismatchError as exc:
            raise BadInputError(str(exc)) from exc
        # Per instance: a request of 8 instances is not "8x slower" than one of 1.
        instances = max(1, len(ready[0]) if ready else 1)
        return replace(
            self._result(tensors, out_of_range),
            invoke_ms=wall * 1000 / instances,
            cpu_ms=cpu * 1000 / instances,
        )

    def check_samples(self, samples: SmokeSamples, atol: float, limit: int | None = None) -> str | None:
        """None when the model reproduces the recorded outputs (the first ``limit`` samples);
        else one line naming the output that does not."""
        count = samples.count if limit is None else min(limit, samples.count)
        inputs = [a[:count] for a in samples.inputs]
        if samples.legacy:  # raw values: preprocessed like a request
            inputs = [self._preprocessed(i, a) for i, a in enumerate(inputs)]
        with self.turn:
            actual = run_samples(self.loaded, inputs, dynamic_batch=self.dynamic_batch, max_chunk=MAX_CHUNK)
        if samples.legacy:  # one output was recorded: the first
            actual = actual[:1]
        return compare_outputs(actual, [o[:count] for o in samples.outputs], atol)

    def time_first_sample(self, samples: SmokeSamples) -> tuple[float, float]:
        """Wall and CPU time (ms) of the first sample through the runtime, timed as ``predict``
        times a request (probation's side-by-side reading, ``agent.update.side_by_side``)."""
        inputs = [a[:1] for a in samples.inputs]
        if samples.legacy:
            inputs = [self._preprocessed(i, a) for i, a in enumerate(inputs)]
        with self.turn:
            wall, cpu = time.perf_counter(), time.thread_time()
            run_samples(self.loaded, inputs, dynamic_batch=self.dynamic_batch, max_chunk=MAX_CHUNK)
            return (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000

    def _preprocessed(self, position: int, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        transform = self.preprocess[position] if position < len(self.preprocess) else None
        return array if transform is None else transform(array)

    def _result(self, tensors: list[npt.NDArray[np.float32]], out_of_range: list[int]) -> PredictResult:
        names = [spec.name for spec in self.manifest.outputs]
        primary = self.manifest.primary_output_index
        outputs = tensors[primary]
        if self.manifest.task == TaskKind.CLASSIFICATION and outputs.ndim == 2 and outputs.shape[1]:
            classes = np.argmax(outputs, axis=1).astype(np.int64)
            confidences = outputs[np.arange(len(outputs)), classes].astype(np.float32)
            return PredictResult(names, tensors, primary, classes, confidences, self.labels, out_of_range)
        return PredictResult(names, tensors, primary, out_of_range=out_of_range)


def _feature_mean(manifest: Manifest) -> npt.NDArray[np.float64] | None:
    baseline = manifest.baseline
    if baseline is None or baseline.input_features is None:
        return None
    return np.asarray(baseline.input_features.mean, dtype=np.float64)


def _feature_edges(manifest: Manifest) -> npt.NDArray[np.float64] | None:
    baseline = manifest.baseline
    if baseline is None or baseline.input_features is None:
        return None
    return padded_edges(baseline.input_features.edges)


def _bounds(manifest: Manifest) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
    baseline = manifest.baseline
    if baseline is None or not baseline.input_ranges:
        return None
    low = np.array([r.min for r in baseline.input_ranges], dtype=np.float32)
    high = np.array([r.max for r in baseline.input_ranges], dtype=np.float32)
    # A feature constant in the baseline (a border pixel) gets the margin of the whole input.
    width = np.maximum(high - low, float(high.max() - low.min()))
    return low - OUT_OF_RANGE_MARGIN * width, high + OUT_OF_RANGE_MARGIN * width


def check_compatible(manifest: Manifest, loaded: LoadedModel) -> None:
    """The model's tensors must be the ones the manifest describes (names aside)."""
    for kind, specs, details in (
        ("input", manifest.inputs, loaded.inputs),
        ("output", manifest.outputs, loaded.outputs),
    ):
        if len(specs) != len(details):
            raise VerifyError(f"the manifest lists {len(specs)} {kind}s but the model has {len(details)}")
        for spec, detail in zip(specs, details, strict=True):
            _check_tensor(kind, spec, detail)
    batches = {d.shape[0] for d in loaded.inputs}
    if len(batches) != 1:
        raise VerifyError(f"the model's inputs disagree on the batch size ({sorted(batches)})")


def _check_tensor(kind: str, spec: TensorSpec, detail: TensorDetail) -> None:
    if np.dtype(spec.dtype) != detail.dtype:
        raise VerifyError(f"{kind} {spec.name}: manifest says {spec.dtype}, the model has {detail.dtype}")
    if (spec.quantization is not None) != detail.quantized:
        raise VerifyError(
            f"{kind} {spec.name}: the manifest and the model disagree on whether it is quantized"
        )
    # The manifest may say -1 where the model allocated a size (older manifests wrote -1 for
    # every batch); a fixed size in the manifest must be the model's.
    allocated = detail.shape
    if len(spec.shape) != len(allocated) or any(
        s not in (-1, a) for s, a in zip(spec.shape, allocated, strict=True)
    ):
        raise VerifyError(
            f"{kind} {spec.name}: manifest shape {spec.shape} does not match the model's "
            f"{list(detail.signature)}"
        )
    if kind == "input" and spec.batch_dim != 0:
        raise VerifyError(
            f"input {spec.name}: the agent batches along the first axis; batch_dim {spec.batch_dim} "
            "is not served"
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
