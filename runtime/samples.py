"""Run a set of samples through a model exactly as a device does, and compare outputs.

``run_samples`` is the one way samples are run: the converter's validation, ``edgefleet
bundle``, the agent's smoke test, probation checks and the serving path all call it, so a
bundle is checked with the same batching, quantization and dequantization that serves it.

Batching is where models differ and where runtimes crash: a model whose batch is fixed (a
detector exported at batch 1, a stateful GRU) is never resized (tflite-runtime has crashed
on such a resize, LiteRT silently answered with the wrong shape); its samples run in chunks
of exactly its batch, the last chunk padded. A dynamic-batch model is resized to the chunk
and restored to its loaded shapes afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.tensors import dequantize_values, quantize_values
from runtime.loader import InputMismatchError, InvokeError, LoadedModel, ResizeError, TensorDetail

__all__ = ["compare_outputs", "prepare_input", "run_samples"]


def prepare_input(array: npt.NDArray[Any], detail: TensorDetail) -> npt.NDArray[Any]:
    """One input's batch in the tensor's dtype: floats are quantized with the tensor's own
    scale and zero point (or cast to a float tensor's type); an array already in the tensor's
    dtype passes unchanged. The rank must be the tensor's (batch first)."""
    array = np.asarray(array)
    if array.ndim != len(detail.shape) or array.ndim == 0:
        raise InputMismatchError(
            f"input {detail.name!r} takes batches of rank {len(detail.shape)} "
            f"(shape {_describe(detail.signature)}), got shape {list(array.shape)}"
        )
    if array.dtype == detail.dtype:
        return array
    kind, target = array.dtype.kind, detail.dtype.kind
    if kind == "f" and (target == "f" or detail.quantized):
        return quantize_values(array, str(detail.dtype), detail.scale, detail.zero_point)
    if kind in "iub" and target in "iub":
        info = np.iinfo(detail.dtype) if target in "iu" else None
        if info is not None and array.size and (array.min() < info.min or array.max() > info.max):
            raise InputMismatchError(
                f"input {detail.name!r} takes {detail.dtype}; values from {array.min()} to {array.max()} "
                "do not fit"
            )
        return array.astype(detail.dtype)
    raise InputMismatchError(f"input {detail.name!r} takes {detail.dtype}, got {array.dtype} values")


def run_samples(
    model: LoadedModel,
    inputs: Sequence[npt.NDArray[Any]],
    *,
    dynamic_batch: bool,
    max_chunk: int = 256,
) -> list[npt.NDArray[np.float32]]:
    """Every output of ``model`` for the samples in ``inputs``, dequantized to float32.

    ``inputs``: one array per model input, in the model's input order, batch first, the same
    number of samples in each. Raises ``InputMismatchError`` for arrays that do not fit (before
    anything reaches the interpreter) and ``InvokeError`` when the runtime fails; either way
    the model is ready for the next call.
    """
    if len(inputs) != len(model.inputs):
        names = ", ".join(d.name for d in model.inputs)
        raise InputMismatchError(f"the model takes {len(model.inputs)} inputs ({names}), got {len(inputs)}")
    arrays = [prepare_input(a, d) for a, d in zip(inputs, model.inputs, strict=True)]
    count = int(arrays[0].shape[0])
    if any(a.shape[0] != count for a in arrays):
        raise InputMismatchError(
            f"every input must hold the same number of samples, got {[int(a.shape[0]) for a in arrays]}"
        )
    if count == 0:
        raise InputMismatchError("there are no samples to run")
    if max_chunk < 1:
        raise ValueError("max_chunk must be at least 1")
    with model.lock:
        if not dynamic_batch:
            return _run_fixed(model, arrays, count)
        try:
            return _run_dynamic(model, arrays, count, max_chunk)
        except ResizeError:
            # Declared dynamic but the runtime cannot resize it (seen with recurrent models):
            # samples of the loaded shape still run, in chunks of the loaded batch.
            if not all(a.shape[1:] == d.shape[1:] for a, d in zip(arrays, model.inputs, strict=True)):
                raise
            return _run_fixed(model, arrays, count)


def _run_fixed(
    model: LoadedModel, arrays: list[npt.NDArray[Any]], count: int
) -> list[npt.NDArray[np.float32]]:
    """Chunks of exactly the allocated batch, never a resize."""
    batch = model.inputs[0].shape[0]
    for detail, array in zip(model.inputs, arrays, strict=True):
        if detail.shape[0] != batch:
            raise InputMismatchError(
                f"the model's inputs disagree on the batch ({model.inputs[0].name!r}: {batch}, "
                f"{detail.name!r}: {detail.shape[0]}); it cannot be run sample by sample"
            )
        if array.shape[1:] != detail.shape[1:]:
            raise InputMismatchError(
                f"input {detail.name!r} takes samples of shape {list(detail.shape[1:])}, "
                f"got {list(array.shape[1:])}"
            )
    parts: list[list[npt.NDArray[np.float32]]] = []
    for start in range(0, count, batch):
        chunk = [_padded(a[start : start + batch], batch) for a in arrays]
        parts.append(_invoke(model, chunk, min(batch, count - start)))
    return _concatenate(parts)


def _run_dynamic(
    model: LoadedModel, arrays: list[npt.NDArray[Any]], count: int, max_chunk: int
) -> list[npt.NDArray[np.float32]]:
    """Resize to the chunk (the last chunk smaller), restore the loaded shapes afterwards."""
    for detail, array in zip(model.inputs, arrays, strict=True):
        if not _fits(detail.signature[1:], array.shape[1:]):
            raise InputMismatchError(
                f"input {detail.name!r} takes samples of shape {_describe(detail.signature[1:])}, "
                f"got {list(array.shape[1:])}"
            )
    loaded = [d.shape for d in model.inputs]
    parts: list[list[npt.NDArray[np.float32]]] = []
    try:
        for start in range(0, count, max_chunk):
            chunk = [a[start : start + max_chunk] for a in arrays]
            model.resize([tuple(int(d) for d in a.shape) for a in chunk])
            parts.append(_invoke(model, chunk, len(chunk[0])))
    finally:
        # A failed restore rebuilt the interpreter at the loaded shapes: the goal is reached.
        with contextlib.suppress(InvokeError):
            model.resize(loaded)
    return _concatenate(parts)


def _invoke(model: LoadedModel, chunk: list[npt.NDArray[Any]], real: int) -> list[npt.NDArray[np.float32]]:
    """One invoke; each output dequantized and cut to the ``real`` (unpadded) samples."""
    size = int(chunk[0].shape[0])
    outputs = []
    for detail, raw in zip(model.outputs, model.invoke(chunk), strict=True):
        values = dequantize_values(raw, str(detail.dtype), detail.scale, detail.zero_point)
        if values.ndim and values.shape[0] == size:
            outputs.append(values[:real])
        elif real == 1:  # an output without a batch axis (e.g. a post-processed detection list)
            outputs.append(values[np.newaxis])
        else:
            raise InvokeError(
                f"output {detail.name!r} has shape {list(values.shape)}, no batch axis of {size}: "
                "run this model one sample at a time"
            )
    return outputs


def _concatenate(parts: list[list[npt.NDArray[np.float32]]]) -> list[npt.NDArray[np.float32]]:
    if len(parts) == 1:
        return parts[0]
    try:
        return [np.concatenate(column, axis=0) for column in zip(*parts, strict=True)]
    except ValueError as exc:  # outputs whose per-sample shape changes from chunk to chunk
        raise InvokeError(f"the outputs of different chunks do not line up: {exc}") from exc


def _padded(chunk: npt.NDArray[Any], batch: int) -> npt.NDArray[Any]:
    """Fill a short last chunk with copies of its last sample (their outputs are dropped)."""
    missing = batch - len(chunk)
    if missing == 0:
        return chunk
    return np.concatenate([chunk, np.repeat(chunk[-1:], missing, axis=0)], axis=0)


def _fits(signature: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return len(signature) == len(shape) and all(s in (-1, d) for s, d in zip(signature, shape, strict=True))


def _describe(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"


def compare_outputs(
    actual: Sequence[npt.NDArray[np.float32]], expected: Sequence[npt.NDArray[Any]], atol: float
) -> str | None:
    """None when every output matches within ``atol``; else one line naming the first output
    that does not, with the shapes, the worst difference and the sample it is in."""
    if len(actual) != len(expected):
        return f"the model gives {len(actual)} outputs, {len(expected)} were expected"
    for position, (got, want) in enumerate(zip(actual, expected, strict=True)):
        got_f = np.asarray(got, dtype=np.float32)
        want_f = np.asarray(want, dtype=np.float32)
        if got_f.shape != want_f.shape:
            return f"output {position}: shape {list(got_f.shape)}, expected {list(want_f.shape)}"
        if got_f.size == 0:
            continue
        diff = np.abs(got_f - want_f)
        diff[np.isnan(diff)] = np.inf  # NaN never matches
        worst = float(diff.max())
        if worst > atol:
            sample = int(np.unravel_index(int(np.argmax(diff)), diff.shape)[0]) if diff.ndim else 0
            return (
                f"output {position} (shape {list(got_f.shape)}): differs by up to {worst:.4g} "
                f"(allowed {atol:g}), worst at sample {sample}"
            )
    return None
