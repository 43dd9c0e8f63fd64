"""The recorded preprocessing applied to raw values: the one function the converter's
validation (``convert`` and ``bundle``) and the agent's serving path both call, so the values a
model was validated on and the values a device feeds it cannot differ.

Order: the channel order first (the last axis reversed when the caller's order is not the
model's), then ``(x - offset) * scale`` in float32, ``offset`` and ``scale`` broadcasting over
the last axis in the model's channel order. Only float arrays are transformed: an integer array
in a quantized input's own dtype is already the tensor's storage value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.manifest import Preprocessing

__all__ = ["InputTransform", "preprocess"]


@dataclass(frozen=True)
class InputTransform:
    """One input's preprocessing, its arrays made once (the agent keeps one per input)."""

    reverse_channels: bool
    offset: npt.NDArray[np.float32] | None
    scale: npt.NDArray[np.float32] | None

    @classmethod
    def of(cls, pre: Preprocessing | None) -> InputTransform | None:
        """None when ``pre`` changes nothing (absent, ``none``, ``in_model``, same channel order)."""
        if pre is None or not (pre.applies or pre.reorders_channels):
            return None
        if not pre.applies:
            return cls(reverse_channels=True, offset=None, scale=None)
        return cls(
            reverse_channels=pre.reorders_channels,
            offset=np.asarray(pre.offset, dtype=np.float32),
            scale=np.asarray(pre.scale, dtype=np.float32),
        )

    def __call__(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if array.dtype.kind != "f":  # already the tensor's storage values (e.g. int8)
            return array
        values = np.asarray(array, dtype=np.float32)
        if self.reverse_channels:
            values = values[..., ::-1]
        if self.offset is None or self.scale is None:
            return np.ascontiguousarray(values)
        return ((values - self.offset) * self.scale).astype(np.float32)


def preprocess(pre: Preprocessing | None, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Raw values to model inputs as a device computes them (``array`` unchanged when ``pre``
    changes nothing)."""
    transform = InputTransform.of(pre)
    return array if transform is None else transform(array)
