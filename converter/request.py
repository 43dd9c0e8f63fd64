"""What a conversion is asked to do: ``ConversionRequest``, validated at construction, and the
small vocabulary (progress callback, runtime requirement) every phase shares."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from converter.errors import InputError
from converter.images import ImagePreprocessing
from converter.preprocessing import Entry, PreprocessingChoice
from protocol.manifest import QuantizationMode, TaskKind
from protocol.schema import ModelName, SemVer
from protocol.validation import describe_first_error

RuntimeRequirement = Literal["tflite-runtime", "litert", "any"]
ModeChoice = QuantizationMode | Literal["auto"]
IOType = Literal["int8", "uint8", "float"]
Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """The progress callback that shows nothing."""


class PreprocessingOptions(BaseModel):
    """The preprocessing options ``convert`` and ``bundle`` share (``converter.preprocessing``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preprocessing: PreprocessingChoice | None = Field(
        default=None,
        description="What the model was trained with; standardize/minmax computed from calibration.",
    )
    preprocess_mean: list[float] | None = Field(default=None, description="standardize: per-feature mean.")
    preprocess_std: list[float] | None = Field(default=None, description="standardize: per-feature std.")
    preprocess_min: list[float] | None = Field(default=None, description="minmax: per-feature minimum.")
    preprocess_max: list[float] | None = Field(default=None, description="minmax: per-feature maximum.")
    preprocess_scale: list[float] | None = Field(default=None, description="scale: (x - offset) * scale.")
    preprocess_offset: list[float] | None = Field(default=None, description="scale: (x - offset) * scale.")
    preprocessing_file: Path | None = Field(
        default=None, description="JSON: one entry, or one per input name (converter.preprocessing.Entry)."
    )
    channel_order: Literal["rgb", "bgr"] | None = Field(
        default=None, description="Image models: the colour channel order the model was trained on."
    )

    @property
    def preprocessing_flags(self) -> Entry:
        """The simple flags as one entry (for a single-input model)."""
        return Entry(
            method=self.preprocessing, mean=self.preprocess_mean, std=self.preprocess_std,
            min=self.preprocess_min, max=self.preprocess_max, scale=self.preprocess_scale,
            offset=self.preprocess_offset, channel_order=self.channel_order,
        )  # fmt: skip

    @property
    def preprocessing_given(self) -> bool:
        """Whether the operator said anything about value preprocessing (then the data are raw)."""
        flags = self.preprocessing_flags.model_copy(update={"channel_order": None})
        return self.preprocessing_file is not None or not flags.empty


class ConversionRequest(PreprocessingOptions):
    """Everything one conversion needs; validated at construction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path = Field(
        description="The source model: .keras, .h5, a SavedModel directory, or module:function."
    )
    calibration: Path = Field(
        description=".npz/.npy/.csv or a folder of images: representative inputs for calibration."
    )
    evaluation: Path = Field(description=".npz/.csv with x and y: inputs and labels/targets for validation.")
    mode: ModeChoice
    name: ModelName
    version: SemVer
    task: TaskKind
    key: Path = Field(description="The operator's Ed25519 private key (PEM) that signs the manifest.")
    out: Path = Field(description="Where the .bundle is written.")
    labels: Path | None = Field(default=None, description="labels.txt, one class name per line.")
    description: str = ""
    force: bool = Field(default=False, description="Replace an existing output file.")
    input_stats: bool = Field(
        default=True,
        description="Record the inputs' feature statistics in the baseline (older agents refuse them).",
    )
    runtime: RuntimeRequirement = Field(
        default="tflite-runtime", description="The runtime the model must load in ('any': at least one)."
    )
    timeout: float = Field(default=300.0, gt=0, description="Seconds allowed for each subprocess step.")
    smoke_samples: int = Field(default=8, ge=1, le=1000)
    io_type: IOType = Field(default="int8", description="Input/output tensor type of an int8 model.")
    max_drop: list[str] = Field(
        default_factory=list, description="Accuracy budget, e.g. accuracy=0.01 or mae=2%."
    )
    rnn: Literal["unroll", "keep"] = Field(
        default="unroll", description="LSTM/GRU: unroll for the fixed sequence length, or keep the loop."
    )
    float_layers: list[str] = Field(default_factory=list, description="int8: layers to keep in float.")
    sklearn_scaler: Literal["preprocessing", "graph"] = Field(
        default="preprocessing",
        description="A scikit-learn Pipeline's leading scaler: the recorded preprocessing, or in the graph.",
    )
    layer_report: bool = Field(default=True, description="int8 over budget: run the per-layer debugger.")
    image_preprocessing: ImagePreprocessing | None = Field(
        default=None,
        description="A calibration folder of images: pixels 0..255 to model inputs (default scale01; "
        "raw when a --preprocessing is recorded, which then maps the pixels).",
    )

    @classmethod
    def build(cls, **fields: Any) -> ConversionRequest:
        """Construct, turning a schema violation into a one-line InputError."""
        try:
            return cls(**fields)
        except PydanticValidationError as exc:
            raise InputError(describe_first_error(exc, with_input=True)) from exc


class RequestFacts(Protocol):
    """What the manifest and the runtime choice need from a request (convert's or bundle's)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def task(self) -> TaskKind: ...
    @property
    def description(self) -> str: ...
    @property
    def runtime(self) -> RuntimeRequirement: ...
    @property
    def out(self) -> Path: ...
