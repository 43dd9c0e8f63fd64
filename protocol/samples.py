"""``samples.npz``: the smoke-test samples a bundle carries, and what the model must answer.

``np.savez_compressed`` with ``input_0``, ``input_1``, ... (one per model input, in the model's
input order and dtype: exactly what the input tensors receive, after any preprocessing; a
quantized model's inputs are stored as int8/uint8, already quantized) and ``output_0``, ...
(every output, dequantized, float32 or float16). Every array is batch first and all hold the
same number of samples. Bundles written before multi-tensor samples carry ``x`` and ``y``: one
input as the caller's raw float32 values (preprocessing still to apply) and the first output;
they are still read.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.errors import BundleError

_KEY = re.compile(r"^(input|output)_(0|[1-9][0-9]*)$")


@dataclass(frozen=True)
class SmokeSamples:
    inputs: list[npt.NDArray[Any]]
    """One array per model input, batch first, in the model's input dtype (or float32 for
    legacy bundles, whose single input is real-valued)."""
    outputs: list[npt.NDArray[np.float32]]
    """The expected outputs, dequantized, as float32."""
    legacy: bool = False
    """Read from ``x``/``y``: the input is raw (the manifest's preprocessing still applies) and
    only the first output was recorded."""

    @property
    def count(self) -> int:
        return int(self.inputs[0].shape[0])


def write_samples(inputs: Sequence[npt.NDArray[Any]], outputs: Sequence[npt.NDArray[Any]]) -> bytes:
    """The bytes of ``samples.npz`` for these samples (validated as ``read_samples`` would)."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for i, array in enumerate(inputs):
        arrays[f"input_{i}"] = np.asarray(array)
    for i, array in enumerate(outputs):
        value = np.asarray(array)
        arrays[f"output_{i}"] = value if value.dtype in (np.float16, np.float32) else value.astype(np.float32)
    _check(arrays, "the samples to write")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_samples(data: bytes) -> SmokeSamples:
    """Parse ``samples.npz``; ``BundleError`` naming the problem when it is not usable."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: np.asarray(archive[key]) for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"samples.npz is not a readable .npz archive: {exc}") from exc
    legacy = set(arrays) == {"x", "y"}
    if legacy:  # the single-input, single-output form
        arrays = {"input_0": arrays["x"].astype(np.float32), "output_0": arrays["y"].astype(np.float32)}
    inputs, outputs = _check(arrays, "samples.npz")
    return SmokeSamples(inputs=inputs, outputs=[o.astype(np.float32) for o in outputs], legacy=legacy)


def _check(
    arrays: dict[str, npt.NDArray[Any]], label: str
) -> tuple[list[npt.NDArray[Any]], list[npt.NDArray[Any]]]:
    if unknown := sorted(key for key in arrays if not _KEY.match(key)):
        raise BundleError(f"{label} holds unexpected arrays {unknown}; expected input_0.., output_0..")
    found: dict[str, list[npt.NDArray[Any]]] = {}
    for kind in ("input", "output"):
        count = sum(1 for key in arrays if key.startswith(kind + "_"))
        missing = [f"{kind}_{i}" for i in range(count) if f"{kind}_{i}" not in arrays]
        if count == 0 or missing:
            raise BundleError(f"{label} lacks {missing or [kind + '_0']}")
        found[kind] = [arrays[f"{kind}_{i}"] for i in range(count)]
    for key, array in arrays.items():
        if array.ndim == 0 or array.dtype.kind not in "iufb":
            raise BundleError(f"{label}: {key} must be a numeric array with a batch axis, got {array.dtype}")
        if key.startswith("output") and array.dtype not in (np.float16, np.float32):
            raise BundleError(f"{label}: {key} must be float32 or float16, got {array.dtype}")
    counts = {key: int(array.shape[0]) for key, array in arrays.items()}
    if len(set(counts.values())) != 1:
        raise BundleError(f"{label}: the arrays hold different numbers of samples {counts}")
    if next(iter(counts.values())) == 0:
        raise BundleError(f"{label} holds no samples")
    return found["input"], found["output"]
