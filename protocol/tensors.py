"""Quantization arithmetic shared by the converter (which records outputs) and the agent
(which must reproduce them): one implementation, so the two can never disagree."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.manifest import TensorSpec

INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
"""The storage types affine quantization is defined for, with their value range."""


def quantize_values(values: npt.ArrayLike, dtype: str, scale: float, zero_point: int) -> npt.NDArray[Any]:
    """Real values -> ``dtype``; affine (round, add the zero point, clip) when ``scale > 0`` and
    ``dtype`` is a quantized integer type, a plain cast otherwise."""
    if scale <= 0 or dtype not in INT_RANGES:
        plain: npt.NDArray[Any] = np.asarray(values, dtype=dtype)
        return plain
    low, high = INT_RANGES[dtype]
    scaled = np.round(np.asarray(values, dtype=np.float64) / scale) + zero_point
    quantized: npt.NDArray[Any] = np.clip(scaled, low, high).astype(dtype)
    return quantized


def dequantize_values(
    values: npt.ArrayLike, dtype: str, scale: float, zero_point: int
) -> npt.NDArray[np.float32]:
    """``dtype`` storage values -> float32 real values (a plain cast when not quantized)."""
    if scale <= 0 or dtype not in INT_RANGES:
        return np.asarray(values, dtype=np.float32)
    return ((np.asarray(values, dtype=np.float32) - zero_point) * scale).astype(np.float32)


def _params(spec: TensorSpec) -> tuple[float, int]:
    if spec.quantization is None:
        return 0.0, 0
    return spec.quantization.scale, spec.quantization.zero_point


def quantize(values: npt.ArrayLike, spec: TensorSpec) -> npt.NDArray[np.generic]:
    """Real-valued input -> the tensor's storage dtype (affine quantization when it has one)."""
    return quantize_values(values, spec.dtype, *_params(spec))


def dequantize(values: npt.ArrayLike, spec: TensorSpec) -> npt.NDArray[np.float32]:
    """The tensor's storage dtype -> float32 real values."""
    return dequantize_values(values, spec.dtype, *_params(spec))
