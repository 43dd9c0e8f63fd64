"""Data capture for retraining: the samples a device uploads and the policy the fleet hands it.

A device that captures keeps some of the instances it served (input tensors in the dtype the
caller sent, every output, the model, when and why) and uploads them in batches with
``POST /api/v1/capture`` (``CaptureBatch``). The fleet may switch capture on or off and set its
sampling through the desired state (``CapturePolicy``); how much disk and bandwidth capture may
use stays the device's own setting.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, StringConstraints, model_validator

from protocol.schema import DeviceId, ModelRef, VersionedMessage, WireModel

MAX_TENSOR_BYTES = 4 * 1024 * 1024
"""Largest tensor of one captured instance; a device never captures a bigger one."""
MAX_TENSORS = 16
"""Most inputs (or outputs) of one sample."""
MAX_BATCH_SAMPLES = 1000
"""Most samples in one upload."""
CAPTURE_DTYPES = ("float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64")

Uid = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
"""A sample's or a stream's id: 32 lower-case hex digits (a random UUID)."""
TensorName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class CaptureReason(StrEnum):
    """Why an instance was kept (the first that applies, in this order)."""

    LOW_CONFIDENCE = "low_confidence"
    OUT_OF_RANGE = "out_of_range"
    DRIFT = "drift"
    UNIFORM = "uniform"


class CaptureTensor(WireModel):
    """One instance's tensor: little-endian bytes of ``shape`` (no batch dimension), base64."""

    dtype: Literal["float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64"]
    shape: list[Annotated[int, Field(ge=0, le=1 << 24)]] = Field(max_length=8)
    data: str = Field(max_length=(MAX_TENSOR_BYTES // 3 + 1) * 4)

    @model_validator(mode="after")
    def _size_matches(self) -> CaptureTensor:
        expected = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        if expected > MAX_TENSOR_BYTES:
            raise ValueError(
                f"shape {self.shape} of {self.dtype} is {expected} bytes; at most {MAX_TENSOR_BYTES}"
            )
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"data is not base64: {exc}") from exc
        if len(raw) != expected:
            raise ValueError(
                f"data holds {len(raw)} bytes; shape {self.shape} of {self.dtype} needs {expected}"
            )
        return self

    def array(self) -> npt.NDArray[np.generic]:
        raw = base64.b64decode(self.data)
        return np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<")).reshape(self.shape)

    @classmethod
    def of(cls, array: npt.NDArray[np.generic]) -> CaptureTensor:
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        return cls(
            dtype=str(array.dtype.name),  # checked by the Literal
            shape=list(array.shape),
            data=base64.b64encode(little.tobytes()).decode("ascii"),
        )


class CaptureSample(WireModel):
    uid: Uid
    """Chosen by the device when it kept the sample: the fleet stores each uid once, so a batch
    sent again (its answer lost in an outage) is not counted twice."""
    ts: datetime
    model: ModelRef
    reason: CaptureReason
    inputs: dict[TensorName, CaptureTensor] = Field(min_length=1, max_length=MAX_TENSORS)
    """Every input by name, in the dtype the caller sent (real values, or already quantized)."""
    outputs: dict[TensorName, CaptureTensor] = Field(max_length=MAX_TENSORS)
    """Every output by name, dequantized (float32)."""


class CaptureBatch(VersionedMessage):
    """``POST /api/v1/capture``: samples from one device, oldest first."""

    kind: Literal["capture"] = "capture"
    device_id: DeviceId
    stream: Uid
    """The device's capture store: a new one (a wiped state directory) starts a new stream."""
    dropped: int = Field(default=0, ge=0)
    """Samples this stream dropped so far (store full, or capture falling behind): a running
    total, so a batch sent twice does not count them twice."""
    samples: list[CaptureSample] = Field(max_length=MAX_BATCH_SAMPLES)


class CaptureReceipt(WireModel):
    """The fleet's answer to a batch: how many samples were new and how many it had already."""

    stored: int = Field(ge=0)
    duplicates: int = Field(ge=0)


class CapturePolicy(WireModel):
    """What to capture, set by an operator for a device or a group and delivered in the desired
    state; it replaces the sampling keys of the device's ``[capture]`` section (the disk and
    bandwidth bounds stay local)."""

    enabled: bool = True
    rate: float = Field(default=0.01, ge=0, le=1)
    """Share of served instances kept at random."""
    low_confidence_below: float | None = Field(default=None, gt=0, le=1)
    """Classification: keep every instance whose top-class confidence is under this."""
    out_of_range: bool = False
    """Keep every instance with an input feature far outside the baseline's range."""
    drift_above: float | None = Field(default=None, gt=0)
    """Keep every instance while the last telemetry window's drift (PSI) is above this."""
