"""The TFLite runtimes a device can run models in, behind one small interface.

``tflite-runtime`` is the design card's runtime (a 2.3 MB aarch64 wheel); ``litert``
(ai-edge-litert) is its successor. Both expose the same ``Interpreter`` class. TensorFlow's
own interpreter is never used: what a device runs is what must be tested.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from protocol.errors import EdgefleetError

RuntimeName = Literal["tflite-runtime", "litert"]
RuntimeChoice = Literal["auto", "tflite-runtime", "litert"]

# Listing order (installed_runtimes): the design card's runtime first.
_RUNTIMES: dict[RuntimeName, tuple[str, str]] = {
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
}


class RuntimeError_(EdgefleetError):  # noqa: N801, N818 - RuntimeError would shadow the builtin
    """No runtime is installed, or the model cannot be loaded or run in the chosen one."""


class ModelLoadError(RuntimeError_):
    """The runtime refused the model (unsupported op or version, corrupt flatbuffer)."""


AUTO_PREFERENCE: tuple[RuntimeName, ...] = ("litert", "tflite-runtime")
"""What ``auto`` takes when both are installed: LiteRT, measured faster here on every model tried
(int8 digits CNN: invoke p50 0.0026 ms vs 0.0124 ms, benchmarks/agent.py; published float models
5-40x) at ~7.5 MB more resident memory; tflite-runtime where LiteRT has no wheel (armv7l) or
memory is tighter than speed. A device gets what it installs: edgefleet[agent] brings
tflite-runtime, edgefleet[litert] adds LiteRT."""


@dataclass(frozen=True)
class RuntimeInfo:
    name: RuntimeName
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def installed_runtimes() -> list[RuntimeInfo]:
    """The runtimes installed here (tflite-runtime first)."""
    found = []
    for name, (_module, dist) in _RUNTIMES.items():
        try:
            found.append(RuntimeInfo(name, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def resolve_runtime(choice: RuntimeChoice) -> RuntimeInfo:
    installed = installed_runtimes()
    if not installed:
        raise RuntimeError_(
            "no TFLite runtime is installed: pip install 'edgefleet[agent]' (tflite-runtime) "
            "or 'edgefleet[litert]' (ai-edge-litert)"
        )
    if choice == "auto":
        by_name = {info.name: info for info in installed}
        return next(by_name[name] for name in AUTO_PREFERENCE if name in by_name)
    for info in installed:
        if info.name == choice:
            return info
    raise RuntimeError_(
        f"runtime {choice!r} is not installed here (installed: {', '.join(str(i) for i in installed)})"
    )


@dataclass(frozen=True)
class TensorDetail:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    zero_point: int


class LoadedModel:
    """One interpreter with its tensors allocated; ``run`` is serialized by a lock.

    The TFLite interpreter is not thread-safe, so concurrent callers queue on the lock.
    """

    def __init__(self, interpreter: Any, runtime: RuntimeInfo) -> None:
        self._interpreter = interpreter
        self.runtime = runtime
        self._lock = threading.Lock()
        self.inputs = _details(interpreter.get_input_details())
        self.outputs = _details(interpreter.get_output_details())
        self._batch = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else 1

    def run(self, inputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Invoke on already-quantized inputs (one array per model input, batch first)."""
        if len(inputs) != len(self.inputs):
            raise RuntimeError_(f"the model takes {len(self.inputs)} inputs, got {len(inputs)}")
        with self._lock:
            batch = int(inputs[0].shape[0]) if inputs[0].ndim else 1
            if batch != self._batch:
                for detail, array in zip(self.inputs, inputs, strict=True):
                    self._interpreter.resize_tensor_input(detail.index, list(array.shape), strict=False)
                self._interpreter.allocate_tensors()
                self._batch = batch
            for detail, array in zip(self.inputs, inputs, strict=True):
                self._interpreter.set_tensor(detail.index, array)
            self._interpreter.invoke()
            return [np.array(self._interpreter.get_tensor(d.index)) for d in self.outputs]


def load_model(model: bytes, runtime: RuntimeChoice = "auto", threads: int = 1) -> LoadedModel:
    """Load a .tflite flatbuffer in the chosen runtime and allocate its tensors."""
    info = resolve_runtime(runtime)
    module = importlib.import_module(_RUNTIMES[info.name][0])
    try:
        interpreter = module.Interpreter(model_content=model, num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{info} cannot load the model: {str(exc).strip().splitlines()[0]}") from exc
    return LoadedModel(interpreter, info)


def _details(raw: list[dict[str, Any]]) -> list[TensorDetail]:
    details = []
    for d in raw:
        scale, zero_point = d.get("quantization", (0.0, 0))
        details.append(
            TensorDetail(
                index=int(d["index"]),
                name=str(d["name"]),
                shape=tuple(int(s) for s in d["shape"]),
                dtype=np.dtype(d["dtype"]),
                scale=float(scale),
                zero_point=int(zero_point),
            )
        )
    return details
