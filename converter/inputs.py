"""Phase "load data": the calibration and evaluation data and the labels, read and checked
against the source model before TensorFlow starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from converter import data as data_mod
from converter import preprocessing
from converter.errors import InputError
from converter.images import ImagePreprocessing
from converter.request import ConversionRequest
from converter.source import SourceModel
from protocol.manifest import Preprocessing, TaskKind

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Inputs:
    calibration: data_mod.Dataset
    """Model inputs: the raw data with ``preprocessing`` applied, as the worker and validator see it."""
    evaluation: data_mod.Dataset
    labels: list[str] | None
    preprocessing: Preprocessing | None = None
    """What the operator said the model was trained with (None: nothing said); convert takes
    models with one input, so this is that input's entry."""
    raw_evaluation: data_mod.Dataset | None = None
    """The evaluation data as given, when preprocessing changed it (the baseline's input ranges
    are the raw values callers send)."""

    @property
    def caller_evaluation(self) -> data_mod.Dataset:
        return self.raw_evaluation or self.evaluation


def load_inputs(request: ConversionRequest, source: SourceModel, calibrated: bool, warn: Warn) -> Inputs:
    """Read and check the data; ``calibrated``: a calibrated mode is asked for (range warnings)."""
    labels = None
    if request.labels is not None:
        if request.task is not TaskKind.CLASSIFICATION:
            raise InputError(f"--labels applies to classification models, not {request.task.value}")
        labels = data_mod.load_labels(request.labels)
    calibration = data_mod.load_data(
        request.calibration,
        "calibration",
        need_y=False,
        input_shape=source.input_shapes[0] if source.input_shapes else None,
        image_preprocessing=_image_preprocessing(request),
    )
    evaluation = data_mod.load_data(request.evaluation, "evaluation", need_y=True)
    if source.input_shapes is not None:
        if len(source.input_shapes) != 1:
            raise InputError(
                f"the model has {len(source.input_shapes)} inputs; the converter supports one input for now"
            )
        data_mod.check_against_input(calibration, "calibration", source.input_shapes[0])
        data_mod.check_against_input(evaluation, "evaluation", source.input_shapes[0])
    else:
        data_mod.check_finite(calibration.x, "calibration x")
        data_mod.check_finite(evaluation.x, "evaluation x")
    if calibrated:
        _check_ranges(calibration, evaluation, warn)
        if len(calibration.x) < data_mod.MIN_CALIBRATION_SAMPLES:
            warn(
                f"only {len(calibration.x)} calibration samples; int8 ranges from fewer than "
                f"{data_mod.MIN_CALIBRATION_SAMPLES} may not cover real inputs"
            )
    if request.smoke_samples > len(evaluation.x):
        raise InputError(
            f"--smoke-samples {request.smoke_samples} is more than the {len(evaluation.x)} evaluation samples"
        )
    resolved = preprocessing.resolve_inputs(
        request.preprocessing_flags, request.preprocessing_file, ["input"], [calibration.x], names_known=False
    )
    pre = resolved.get("input")
    if pre is None or not (pre.applies or pre.reorders_channels):
        return Inputs(calibration, evaluation, labels, pre)
    return Inputs(
        data_mod.Dataset(preprocessing.apply(pre, calibration.x), None),
        data_mod.Dataset(preprocessing.apply(pre, evaluation.x), evaluation.y),
        labels,
        pre,
        raw_evaluation=evaluation,
    )


def _image_preprocessing(request: ConversionRequest) -> ImagePreprocessing:
    """Images are mapped by --image-preprocessing, or read raw when a recorded preprocessing maps them."""
    if request.preprocessing_given:
        if request.image_preprocessing not in (None, "raw"):
            raise InputError(
                f"--image-preprocessing {request.image_preprocessing} and --preprocessing both map the "
                "pixels: give the preprocessing the model was trained with once, as --preprocessing"
            )
        return "raw"
    return request.image_preprocessing or "scale01"


def check_labels(
    request: ConversionRequest, labels: list[str] | None, output_shape: list[int | None]
) -> None:
    """The labels file names exactly the model's classes (known once the model is loaded)."""
    if labels is not None and output_shape[-1] is not None and len(labels) != output_shape[-1]:
        raise InputError(
            f"{request.labels} holds {len(labels)} labels but the model has {output_shape[-1]} classes"
        )


def _check_ranges(calibration: data_mod.Dataset, evaluation: data_mod.Dataset, warn: Warn) -> None:
    """int8 ranges come from the calibration data: evaluation values far outside them get clipped."""
    low, high = float(calibration.x.min()), float(calibration.x.max())
    eval_low, eval_high = float(evaluation.x.min()), float(evaluation.x.max())
    margin = 0.1 * max(high - low, 1e-12)
    if eval_low < low - margin or eval_high > high + margin:
        warn(
            f"evaluation inputs span [{eval_low:.4g}, {eval_high:.4g}] but the calibration data only "
            f"[{low:.4g}, {high:.4g}]: calibrated modes will clip inputs outside it"
        )
