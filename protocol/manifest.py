"""The bundle manifest: everything a device needs to know before it trusts a model."""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

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
    """Full shape including the batch dimension; -1 marks a dynamic dimension (the model's
    ``shape_signature``), any other value is fixed."""
    dtype: TensorDType
    quantization: Quantization | None = None
    """Set when the tensor is quantized: the agent quantizes inputs and dequantizes outputs."""
    batch_dim: int | None = 0
    """The axis that counts instances; None when the tensor has no batch dimension."""

    @model_validator(mode="after")
    def _shape_is_sane(self) -> TensorSpec:
        if any(d < -1 for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: shape {self.shape} has a size below -1")
        if self.batch_dim is not None and not 0 <= self.batch_dim < len(self.shape):
            raise ValueError(
                f"tensor {self.name!r}: batch_dim {self.batch_dim} is not an axis of shape {self.shape}"
            )
        return self

    @property
    def fixed_batch(self) -> int | None:
        """The batch size when the model fixes it; None when it is dynamic or there is none."""
        if self.batch_dim is None or self.shape[self.batch_dim] == -1:
            return None
        return self.shape[self.batch_dim]

    @property
    def instance_shape(self) -> list[int]:
        """The shape of one instance: the full shape without the batch axis."""
        if self.batch_dim is None:
            return list(self.shape)
        return self.shape[: self.batch_dim] + self.shape[self.batch_dim + 1 :]


class FileEntry(WireModel):
    sha256: Sha256Hex
    size: int = Field(ge=0)


PreprocessingMethod = Literal["none", "standardize", "minmax", "scale", "in_model"]


class Preprocessing(WireModel):
    """What one input's raw values go through before the model sees them.

    ``standardize``, ``minmax`` and ``scale`` are applied by the agent to raw float inputs as
    ``(x - offset) * scale`` (standardize: offset = mean, scale = 1/std; minmax: offset = min,
    scale = 1/(max - min)); a list broadcasts over the input's last axis (one value per channel
    or feature, in the model's channel order). ``none``: raw values go straight in.
    ``in_model``: the model carries its own normalisation layer and the agent applies no
    arithmetic. When ``caller_channel_order`` is set and differs from ``channel_order``, the
    agent first reverses the last axis (RGB <-> BGR). Resizing is the caller's job: an input of
    another spatial size is refused. The converter records what the model was trained with so
    that a device never has to guess; ``runtime.preprocess`` is the one implementation.
    """

    method: PreprocessingMethod = "none"
    scale: float | list[float] = 1.0
    offset: float | list[float] = 0.0
    channel_order: Literal["rgb", "bgr"] | None = None
    """The colour channel order the model was trained on."""
    caller_channel_order: Literal["rgb", "bgr"] | None = None
    """The order callers send; None (and every manifest older than this field): the model's
    order, nothing is reordered. Set by the converter together with ``channel_order``."""
    description: str = ""

    @model_validator(mode="after")
    def _parameters_fit_method(self) -> Preprocessing:
        scales = self.scale if isinstance(self.scale, list) else [self.scale]
        offsets = self.offset if isinstance(self.offset, list) else [self.offset]
        if not scales or not offsets:
            raise ValueError("preprocessing scale and offset lists must not be empty")
        if not all(math.isfinite(v) for v in scales + offsets):
            raise ValueError("preprocessing scale and offset must be finite numbers")
        if any(v == 0 for v in scales):
            raise ValueError("preprocessing scale must not be 0 (it would erase the input)")
        if self.method in ("none", "in_model") and not self.is_identity:
            raise ValueError(f"preprocessing method {self.method!r} takes no scale or offset")
        return self

    @property
    def applies(self) -> bool:
        """Whether the agent transforms raw inputs (False for none, in_model and the identity)."""
        return self.method not in ("none", "in_model") and not self.is_identity

    @property
    def reorders_channels(self) -> bool:
        """Whether the agent reverses the last axis (callers send the other colour order)."""
        return (
            self.channel_order is not None
            and self.caller_channel_order is not None
            and self.channel_order != self.caller_channel_order
        )

    @property
    def is_identity(self) -> bool:
        scales = self.scale if isinstance(self.scale, list) else [self.scale]
        offsets = self.offset if isinstance(self.offset, list) else [self.offset]
        return all(v == 1.0 for v in scales) and all(v == 0.0 for v in offsets)


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


class FeatureStats(WireModel):
    """The first input's summary features (``protocol.features``) over the evaluation inputs: what
    the agent tests each window's inputs against (``agent.drift``)."""

    values: int = Field(ge=1)
    """Flattened values per instance the summary was taken from; other shapes are not tested."""
    mean: list[float] = Field(min_length=1)
    std: list[float]
    mode: list[float]
    """The most common value of each feature, and its share: how likely a constant window is."""
    mode_share: list[float]
    edges: list[list[float]]
    """Per feature, the distinct deciles of the baseline: a value goes to the bin of the edges at
    or below it (``len(edges[i]) + 1`` bins)."""
    shares: list[list[float]]
    """Per feature, the baseline's share in each of those bins."""
    precision_cholesky: list[float] | None = None
    """Lower triangle (row by row) of L with L Lᵀ = the inverse covariance of the features: the
    joint test of all means. Only for at most ``MAX_JOINT_FEATURES`` features."""

    @model_validator(mode="after")
    def _same_lengths(self) -> FeatureStats:
        size = len(self.mean)
        if any(len(v) != size for v in (self.std, self.mode, self.mode_share, self.edges, self.shares)):
            raise ValueError(
                "feature statistics need one mean, std, mode, share, edges and shares per feature"
            )
        if any(len(s) != len(e) + 1 for e, s in zip(self.edges, self.shares, strict=True)):
            raise ValueError("each feature needs one share more than it has edges")
        if self.precision_cholesky is not None and len(self.precision_cholesky) != size * (size + 1) // 2:
            raise ValueError(f"precision_cholesky needs {size * (size + 1) // 2} values for {size} features")
        return self


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
    input_features: FeatureStats | None = None
    """The first input's summary features; absent in bundles converted before input drift."""


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
    primary_output: str | None = None
    """The output the classification/regression conveniences, prediction health and the
    baseline use; None: the first output."""
    labels: list[str] | None = None
    preprocessing: dict[str, Preprocessing] = Field(default_factory=dict)
    """Keyed by input tensor name; an input without an entry gets its raw values."""
    quantization: QuantizationMode
    tools: ToolVersions
    runtimes: dict[str, RuntimeCheck] = Field(default_factory=dict)
    """Keyed by runtime name (``tflite-runtime``, ``litert``)."""
    validation: ValidationReport | None = None
    baseline: BaselineStats | None = None
    smoke: SmokeTest
    conversion: ConversionReport | None = None
    """The converter's report (modes tried, budget, recurrent layers); absent in older bundles."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_preprocessing(cls, data: Any) -> Any:
        """Manifests before per-input preprocessing carried one ``{scale, offset, description}``
        object for the single input: map it onto the first input's name."""
        if not isinstance(data, dict):
            return data
        pre = data.get("preprocessing")
        if not isinstance(pre, dict) or not pre or all(isinstance(v, dict) for v in pre.values()):
            return data
        if not set(pre) <= {"scale", "offset", "description"}:
            return data  # neither form: the field's own validation names the problem
        inputs = data.get("inputs")
        first = inputs[0] if isinstance(inputs, list) and inputs else None
        name = first.get("name") if isinstance(first, dict) else getattr(first, "name", None)
        if not isinstance(name, str):
            return data
        legacy = {"scale": pre.get("scale", 1.0), "offset": pre.get("offset", 0.0)}
        identity = legacy == {"scale": 1.0, "offset": 0.0}
        description = pre.get("description", "")
        entry = {**legacy, "method": "none" if identity else "scale", "description": description}
        if identity and not entry["description"]:
            return {**data, "preprocessing": {}}
        return {**data, "preprocessing": {name: entry}}

    @model_validator(mode="after")
    def _tensors_consistent(self) -> Manifest:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"the manifest names two {kind}s alike: {names}")
        output_names = [spec.name for spec in self.outputs]
        if self.primary_output is not None and self.primary_output not in output_names:
            raise ValueError(
                f"primary_output {self.primary_output!r} is not one of the outputs {output_names}"
            )
        by_name = {spec.name: spec for spec in self.inputs}
        for name, pre in self.preprocessing.items():
            if name not in by_name:
                raise ValueError(
                    f"preprocessing names {name!r}, which is not one of the inputs {list(by_name)}"
                )
            last = by_name[name].shape[-1]
            if pre.reorders_channels and last not in (-1, 3):
                raise ValueError(
                    f"preprocessing of {name!r} reorders colour channels, but its last axis has "
                    f"{last} values, not 3"
                )
            for field_name, value in (("scale", pre.scale), ("offset", pre.offset)):
                if isinstance(value, list) and len(value) != 1 and last != -1 and len(value) != last:
                    raise ValueError(
                        f"preprocessing of {name!r}: {len(value)} {field_name} values "
                        f"for a last axis of {last}"
                    )
        return self

    @property
    def primary_output_index(self) -> int:
        """Position of the primary output in ``outputs``."""
        if self.primary_output is None:
            return 0
        return [spec.name for spec in self.outputs].index(self.primary_output)

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
