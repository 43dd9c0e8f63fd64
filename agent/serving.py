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
    predictions: list[Prediction] | None


@dataclass(frozen=True)
class ActiveModel:
    """A loaded model with its manifest: immutable apart from the interpreter's own lock."""

    sha256: str
    manifest: Manifest
    labels: list[str] | None
    loaded: LoadedModel = field(repr=False)

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
        return cls(sha256=stored.sha256, manifest=stored.manifest, labels=stored.labels, loaded=loaded)

    def predict(self, batch: npt.NDArray[np.float32]) -> PredictResult:
        """Run a checked float batch (see ``parse_inputs``) and dequantize the first output."""
        pre = self.manifest.preprocessing
        if pre.scale != 1.0 or pre.offset != 0.0:
            batch = ((batch - pre.offset) * pre.scale).astype(np.float32)
        raw = self.loaded.run([quantize(batch, self.input_spec)])
        outputs = dequantize(raw[0], self.output_spec)
        predictions = None
        if self.manifest.task == TaskKind.CLASSIFICATION and outputs.ndim == 2:
            predictions = []
            for row in outputs:
                index = int(np.argmax(row))
                label = self.labels[index] if self.labels and index < len(self.labels) else None
                predictions.append(Prediction(index, label, float(row[index])))
        return PredictResult(outputs=outputs, predictions=predictions)


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
