"""The TFLite runtimes a device can run models in, behind one small interface.

``tflite-runtime`` is the design card's runtime (a 2.3 MB aarch64 wheel); ``litert``
(ai-edge-litert) is its successor. Both expose the same ``Interpreter`` class. TensorFlow's
own interpreter is never used: what a device runs is what must be tested.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import threading
from collections.abc import Callable, Sequence
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
    """The shape the tensor was allocated with at load (-1 never appears here)."""
    dtype: np.dtype[Any]
    scale: float
    zero_point: int
    shape_signature: tuple[int, ...] = ()
    """The model's declared shape: -1 marks a dimension that may be resized (a dynamic batch)."""
    signature_name: str | None = None
    """The tensor's name in the model's only SignatureDef (``image``, ``boxes``), when it has one:
    friendlier than the graph name (``serving_default_image:0``)."""

    @property
    def quantized(self) -> bool:
        return self.scale > 0 and self.dtype.kind in "iu"

    @property
    def signature(self) -> tuple[int, ...]:
        """``shape_signature`` when the runtime reports one, else the allocated shape."""
        return self.shape_signature or self.shape


class InputMismatchError(RuntimeError_):
    """Arrays that do not fit the model's input tensors (count, rank, shape or dtype): refused
    before they reach the interpreter."""


class InvokeError(RuntimeError_):
    """The runtime failed while resizing or invoking; the interpreter was rebuilt afterwards."""


class ResizeError(InvokeError):
    """The runtime refused to resize the inputs (a batch it declares dynamic but cannot change)."""


class LoadedModel:
    """One interpreter with its tensors allocated.

    The TFLite interpreter is not thread-safe: every use holds ``lock`` (``run`` and
    ``runtime.run_samples`` take it; callers of ``resize``/``invoke`` must hold it). A failed
    resize or invoke rebuilds the interpreter from the model bytes, so the next call starts
    from the shapes the model was loaded with.
    """

    def __init__(self, build: Callable[[], Any], runtime: RuntimeInfo) -> None:
        self._build = build
        self._interpreter = build()
        self.runtime = runtime
        self.lock = threading.Lock()
        names = _signature_names(self._interpreter)
        self.inputs = _details(self._interpreter.get_input_details(), names)
        self.outputs = _details(self._interpreter.get_output_details(), names)
        self._shapes = [d.shape for d in self.inputs]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The input shapes currently allocated."""
        return list(self._shapes)

    def rebuild(self) -> None:
        """A fresh interpreter at the loaded shapes (after a failure left this one unknown)."""
        try:
            self._interpreter = self._build()
        except (ValueError, RuntimeError) as exc:  # it loaded once: this is not expected
            raise InvokeError(f"{self.runtime} cannot reload the model: {_first_line(exc)}") from exc
        self._shapes = [d.shape for d in self.inputs]

    def resize(self, shapes: Sequence[tuple[int, ...]]) -> None:
        """Resize the inputs and reallocate. ``strict``: only dimensions the model declares
        dynamic may change, so a fixed-batch model is refused by the runtime itself too."""
        if list(shapes) == self._shapes:
            return
        try:
            for detail, shape in zip(self.inputs, shapes, strict=True):
                self._interpreter.resize_tensor_input(detail.index, list(shape), strict=True)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            self.rebuild()
            raise ResizeError(
                f"{self.runtime} cannot resize the inputs to {[list(s) for s in shapes]}: {_first_line(exc)}"
            ) from exc
        self._shapes = [tuple(s) for s in shapes]

    def invoke(self, arrays: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Invoke on arrays of exactly the allocated shapes and the inputs' dtypes; raw outputs."""
        if len(arrays) != len(self.inputs):
            raise InputMismatchError(f"the model takes {len(self.inputs)} inputs, got {len(arrays)}")
        for detail, shape, array in zip(self.inputs, self._shapes, arrays, strict=True):
            if array.shape != shape or array.dtype != detail.dtype:
                raise InputMismatchError(
                    f"input {detail.name!r} takes {detail.dtype} of shape {list(shape)}, "
                    f"got {array.dtype} of shape {list(array.shape)}"
                )
        try:
            for detail, array in zip(self.inputs, arrays, strict=True):
                self._interpreter.set_tensor(detail.index, array)
            self._interpreter.invoke()
            return [np.array(self._interpreter.get_tensor(d.index)) for d in self.outputs]
        except (ValueError, RuntimeError) as exc:
            self.rebuild()
            raise InvokeError(f"{self.runtime} failed to run the model: {_first_line(exc)}") from exc

    def run(self, inputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Invoke once on already-quantized inputs (one array per model input, batch first).

        A batch other than the allocated one resizes the inputs only where the model declares
        the batch dynamic (else ``InputMismatchError``). ``runtime.run_samples`` is the way to
        run any number of samples on any model; this is the raw single invoke it is built on.
        """
        with self.lock:
            if len(inputs) == len(self.inputs):
                wanted = [tuple(int(d) for d in a.shape) for a in inputs]
                if wanted != self._shapes and all(
                    d.signature[:1] == (-1,) and s[1:] == d.shape[1:]
                    for d, s in zip(self.inputs, wanted, strict=True)
                ):
                    self.resize(wanted)
            return self.invoke(inputs)


def load_model(model: bytes, runtime: RuntimeChoice = "auto", threads: int = 1) -> LoadedModel:
    """Load a .tflite flatbuffer in the chosen runtime and allocate its tensors."""
    info = resolve_runtime(runtime)
    module = importlib.import_module(_RUNTIMES[info.name][0])

    def build() -> Any:
        interpreter = module.Interpreter(model_content=model, num_threads=threads)
        interpreter.allocate_tensors()
        return interpreter

    try:
        return LoadedModel(build, info)
    except (ValueError, RuntimeError) as exc:
        reason = _first_line(exc)
        if found := _CUSTOM_OP.search(str(exc)):
            raise ModelLoadError(
                f"{info} cannot load the model: it uses the custom op {found.group(1)}, which this "
                "runtime does not provide; convert the model with TFLite builtin ops only "
                f"({reason})"
            ) from exc
        raise ModelLoadError(f"{info} cannot load the model: {reason}") from exc


_CUSTOM_OP = re.compile(r"unresolved custom op: ([A-Za-z0-9_./-]+?)\.?(?:\s|$)")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _signature_names(interpreter: Any) -> dict[int, str]:
    """Tensor index -> name in the model's SignatureDef; empty unless there is exactly one."""
    try:
        signatures = interpreter._get_full_signature_list()  # both runtimes have it; not public API
    except (AttributeError, ValueError, RuntimeError):
        return {}
    if not isinstance(signatures, dict) or len(signatures) != 1:
        return {}
    (signature,) = signatures.values()
    names: dict[int, str] = {}
    for kind in ("inputs", "outputs"):
        for name, index in dict(signature.get(kind) or {}).items():
            names[int(index)] = str(name)
    return names


def _details(raw: list[dict[str, Any]], names: dict[int, str]) -> list[TensorDetail]:
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
                shape_signature=tuple(int(s) for s in d.get("shape_signature", d["shape"])),
                signature_name=names.get(int(d["index"])),
            )
        )
    return details
