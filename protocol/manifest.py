"""The bundle manifest: everything a device needs to know before it trusts a model."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from protocol.schema import ModelName, SemVer, Sha256Hex, VersionedMessage, WireModel


class TaskKind(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    FORECAST = "forecast"


class QuantizationMode(StrEnum):
    NONE = "none"
    """float32 weights and activations."""
    DYNAMIC = "dynamic"
    """int8 weights, float activations (dynamic-range quantization)."""
    FLOAT16 = "float16"
    """float16 weights, dequantized at load."""
    INT8 = "int8"
    """Full integer: int8 weights and activations, calibrated on a representative set."""
    INT16X8 = "int16x8"
    """Experimental: int8 weights, int16 activations, calibrated; slow on most CPU kernels."""


TensorDType = Literal["float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"]


class Quantization(WireModel):
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``."""

    scale: float = Field(gt=0)
    zero_point: int


class TensorSpec(WireModel):
    """One input or output tensor as the TFLite model declares it."""

    name: str
    shape: list[int] = Field(min_length=1)
    """Full shape including the batch dimension; -1 marks a dynamic dimension."""
    dtype: TensorDType
    quantization: Quantization | None = None
    """Set when the tensor is quantized: the agent quantizes inputs and dequantizes outputs."""


class FileEntry(WireModel):
    sha256: Sha256Hex
    size: int = Field(ge=0)


class Preprocessing(WireModel):
    """What the caller's raw features go through before the model sees them.

    Applied by the agent as ``(x - offset) * scale`` when not the identity; the converter records
    what the model was trained with so that a device never has to guess.
    """

    scale: float = 1.0
    offset: float = 0.0
    description: str = ""


class ToolVersions(WireModel):
    edgefleet: str
    tensorflow: str | None = None
    tflite_runtime: str | None = None
    litert: str | None = None


class RuntimeCheck(WireModel):
    """Whether one of the agent's runtimes loads and runs the model on the converter's host."""

    version: str | None = None
    loads: bool
    error: str | None = None
    latency_ms_p50: float | None = None


class ValidationReport(WireModel):
    """The converted model against the source model, on the evaluation set."""

    samples: int = Field(ge=0)
    runtime: str
    """The runtime the converted model was run in for these figures."""
    metrics: dict[str, float]
    """Task metric of source and converted model, e.g. ``accuracy_source``, ``accuracy``."""
    top1_agreement: float | None = None
    max_abs_error: float
    mean_abs_error: float
    snr_db: float | None = None
    """Output signal-to-noise ratio of the converted model against the source, in dB."""


class Histogram(WireModel):
    edges: list[float] = Field(min_length=2)
    counts: list[int]

    @model_validator(mode="after")
    def _counts_match_edges(self) -> Histogram:
        if len(self.counts) != len(self.edges) - 1:
            raise ValueError(f"a histogram with {len(self.edges)} edges needs {len(self.edges) - 1} counts")
        return self


class FeatureRange(WireModel):
    min: float
    max: float
    mean: float


class BaselineStats(WireModel):
    """What healthy predictions look like, for the agent's prediction-health checks."""

    samples: int = Field(ge=0)
    class_frequencies: list[float] | None = None
    """Classification: share of each predicted class (sums to 1)."""
    output_histogram: Histogram | None = None
    """Regression and forecasting: histogram of the first output value."""
    confidence_histogram: Histogram | None = None
    """Classification: histogram of the top-class probability, edges over [0, 1]."""
    input_ranges: list[FeatureRange] = Field(default_factory=list)
    """Per flattened input feature; capped by the converter for large inputs."""


class SmokeTest(WireModel):
    """How the agent checks a staged model against the converter's recorded outputs."""

    samples: int = Field(ge=1)
    atol: float = Field(ge=0)
    """Largest allowed absolute difference between the device's and the converter's outputs."""


class CandidateReport(WireModel):
    """One quantization mode the converter tried (``--mode auto`` tries every applicable one)."""

    mode: QuantizationMode
    ok: bool
    """Converted, loads in the required runtime and is inside the accuracy budget."""
    error: str | None = None
    model_size: int | None = None
    size_ratio: float | None = None
    """Against the float32 .tflite when it was converted, else against the float32 weight bytes."""
    metrics: dict[str, float] = Field(default_factory=dict)
    latency_ms_p50: dict[str, float] = Field(default_factory=dict)
    """Host latency of one sample, per runtime that loads the model."""
    chosen: bool = False


class ConversionReport(WireModel):
    """How the converter got to this model: the facts an operator reviews before shipping it."""

    source: str = ""
    """The source model's kind (keras, h5, saved_model, factory, tflite)."""
    io_type: str | None = None
    """int8 / uint8 / float: the input and output tensor type of a full-integer model."""
    recurrent: str | None = None
    """LSTM/GRU layers found and what became of them (unrolled, WHILE loop, fused op)."""
    ops: list[str] = Field(default_factory=list)
    """TFLite builtin ops in the converted model."""
    float_layers: list[str] = Field(default_factory=list)
    """Layers kept in float in an int8 model (``--float-layers``)."""
    max_drop: dict[str, str] = Field(default_factory=dict)
    """The accuracy budget the model was checked against, e.g. ``{"accuracy": "0.01"}``."""
    candidates: list[CandidateReport] = Field(default_factory=list)


class Manifest(VersionedMessage):
    """``manifest.json`` inside a bundle. Signed; lists every other file by hash."""

    name: ModelName
    version: SemVer
    task: TaskKind
    created_at: datetime
    description: str = ""
    files: dict[str, FileEntry]
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    labels: list[str] | None = None
    preprocessing: Preprocessing = Preprocessing()
    quantization: QuantizationMode
    tools: ToolVersions
    runtimes: dict[str, RuntimeCheck] = Field(default_factory=dict)
    """Keyed by runtime name (``tflite-runtime``, ``litert``)."""
    validation: ValidationReport | None = None
    baseline: BaselineStats | None = None
    smoke: SmokeTest
    conversion: ConversionReport | None = None
    """The converter's report (modes tried, budget, recurrent layers); absent in older bundles."""

    @model_validator(mode="after")
    def _model_file_listed(self) -> Manifest:
        if "model.tflite" not in self.files:
            raise ValueError("the manifest must list model.tflite among its files")
        if "samples.npz" not in self.files:
            raise ValueError("the manifest must list samples.npz among its files")
        if self.labels is not None and "labels.txt" not in self.files:
            raise ValueError("a manifest with labels must list labels.txt among its files")
        return self

    @property
    def model_sha256(self) -> Sha256Hex:
        return self.files["model.tflite"].sha256
