"""Quantization arithmetic shared by the converter (which records outputs) and the agent
(which must reproduce them): one implementation, so the two can never disagree."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from protocol.manifest import TensorSpec

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def quantize(values: npt.ArrayLike, spec: TensorSpec) -> npt.NDArray[np.generic]:
    """Real-valued input -> the tensor's storage dtype (affine quantization when it has one)."""
    if spec.quantization is None or spec.dtype not in _INT_RANGES:
        plain: npt.NDArray[np.generic] = np.asarray(values, dtype=spec.dtype)
        return plain
    low, high = _INT_RANGES[spec.dtype]
    q = spec.quantization
    scaled = np.round(np.asarray(values, dtype=np.float64) / q.scale) + q.zero_point
    quantized: npt.NDArray[np.generic] = np.clip(scaled, low, high).astype(spec.dtype)
    return quantized


def dequantize(values: npt.ArrayLike, spec: TensorSpec) -> npt.NDArray[np.float32]:
    """The tensor's storage dtype -> float32 real values."""
    if spec.quantization is None or spec.dtype not in _INT_RANGES:
        return np.asarray(values, dtype=np.float32)
    q = spec.quantization
    return ((np.asarray(values, dtype=np.float32) - q.zero_point) * q.scale).astype(np.float32)
