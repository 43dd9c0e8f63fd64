"""The preprocessing a model was trained with: taken from the operator's options (or computed
from the raw calibration data), recorded in the manifest, and applied to the raw calibration and
evaluation data exactly as the agent applies it to requests: ``(x - offset) * scale`` in float32,
a list broadcasting over the input's last axis. A model that carries its own Keras
``Normalization``/``Rescaling`` layer is recorded as ``in_model`` (the agent applies nothing).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError as PydanticValidationError

from converter.errors import InputError
from protocol.manifest import Preprocessing
from protocol.validation import describe_first_error

PreprocessingChoice = Literal["none", "standardize", "minmax", "scale"]


def resolve(
    *,
    method: PreprocessingChoice | None,
    mean: list[float] | None,
    std: list[float] | None,
    scale: list[float] | None,
    offset: list[float] | None,
    file: Path | None,
    channel_order: Literal["rgb", "bgr"] | None,
    calibration: npt.NDArray[np.float32],
) -> Preprocessing | None:
    """The preprocessing the options describe (None: nothing said); ``InputError`` for options
    that contradict each other or do not fit the data's last axis."""
    if file is not None:
        if method is not None or any(v is not None for v in (mean, std, scale, offset)):
            raise InputError(
                "--preprocessing-file gives the whole preprocessing: drop the other --preprocess options"
            )
        return _from_file(file, channel_order)
    features = int(calibration.shape[-1]) if calibration.ndim > 1 else 1
    if mean is not None or std is not None:
        if method not in (None, "standardize") or scale is not None or offset is not None:
            raise InputError("--preprocess-mean/--preprocess-std describe --preprocessing standardize only")
        if mean is None or std is None:
            raise InputError("give both --preprocess-mean and --preprocess-std")
        if any(v <= 0 for v in std):
            raise InputError(f"--preprocess-std {_show(std)}: every standard deviation must be positive")
        offsets = _fit(mean, features, "--preprocess-mean")
        scales = [1.0 / v for v in _fit(std, features, "--preprocess-std")]
        description = f"standardized with the given mean {_show(mean)} and std {_show(std)}"
        return _made("standardize", scales, offsets, channel_order, description)
    if scale is not None or offset is not None:
        if method not in (None, "scale"):
            raise InputError(
                f"--preprocess-scale/--preprocess-offset describe --preprocessing scale, not {method}"
            )
        if scale is None:
            raise InputError(
                "--preprocessing scale needs --preprocess-scale (and optionally --preprocess-offset)"
            )
        given_offset = offset or [0.0]
        return _made(
            "scale", _fit(scale, features, "--preprocess-scale"),
            _fit(given_offset, features, "--preprocess-offset"), channel_order,
            f"(x - {_show(given_offset)}) * {_show(scale)}",
        )  # fmt: skip
    if method == "scale":
        raise InputError(
            "--preprocessing scale needs --preprocess-scale (and optionally --preprocess-offset)"
        )
    if method in ("standardize", "minmax"):
        return _computed(method, calibration, channel_order)
    if method == "none" or channel_order is not None:
        return Preprocessing(method="none", channel_order=channel_order, description="raw values")
    return None


def apply(pre: Preprocessing | None, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Raw values to model inputs, as the agent does it (float32 arithmetic, same broadcast)."""
    if pre is None or not pre.applies:
        return x
    offset = np.asarray(pre.offset, dtype=np.float32)
    scale = np.asarray(pre.scale, dtype=np.float32)
    return ((x - offset) * scale).astype(np.float32)


def recorded(
    given: Preprocessing | None, layers: list[str], warn: Callable[[str], None]
) -> Preprocessing | None:
    """What goes into the manifest, once the worker said which normalisation layers
    (``Normalization``, ``Rescaling``) the model carries: those make it ``in_model``."""
    if not layers:
        return given
    names = ", ".join(sorted(set(layers)))
    if given is not None and given.applies:
        warn(
            f"the model normalises its inputs itself ({names}) and --preprocessing {given.method} is "
            "recorded too: devices will transform inputs twice unless the model was trained that way"
        )
        return given
    channel_order = given.channel_order if given is not None else None
    return Preprocessing(
        method="in_model",
        channel_order=channel_order,
        description=f"the model normalises its inputs itself ({names})",
    )


def _computed(
    method: Literal["standardize", "minmax"],
    calibration: npt.NDArray[np.float32],
    channel_order: Literal["rgb", "bgr"] | None,
) -> Preprocessing:
    """Per feature of the last axis, from the raw calibration data (float64 sums)."""
    flat = calibration.reshape(-1, calibration.shape[-1] if calibration.ndim > 1 else 1).astype(np.float64)
    if method == "standardize":
        offset, spread = flat.mean(axis=0), flat.std(axis=0)
        what = "standardized with the calibration data's mean and std"
    else:
        offset, spread = flat.min(axis=0), flat.max(axis=0) - flat.min(axis=0)
        what = "min-max scaled to [0, 1] with the calibration data's range"
    constant = int(np.count_nonzero(spread == 0))
    spread = np.where(spread == 0, 1.0, spread)  # a constant feature stays centred, not divided by 0
    if constant:
        what += f" ({constant} constant feature(s) only centred)"
    return _made(method, [float(1.0 / s) for s in spread], [float(o) for o in offset], channel_order, what)


def _made(
    method: PreprocessingChoice,
    scale: list[float],
    offset: list[float],
    channel_order: Literal["rgb", "bgr"] | None,
    description: str,
) -> Preprocessing:
    """Rounded to float32 (what the agent computes with), a single value when all are one."""

    def value(values: list[float]) -> float | list[float]:
        as32 = [float(np.float32(v)) for v in values]
        return as32[0] if len(as32) == 1 else as32

    return Preprocessing(
        method=method,
        scale=value(scale),
        offset=value(offset),
        channel_order=channel_order,
        description=description,
    )


def _fit(values: list[float], features: int, option: str) -> list[float]:
    if len(values) not in (1, features):
        raise InputError(
            f"{option} has {len(values)} values but the inputs' last axis has {features}: "
            f"give 1 or {features}"
        )
    return values


def _from_file(path: Path, channel_order: Literal["rgb", "bgr"] | None) -> Preprocessing:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"preprocessing file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"preprocessing file {path} is not readable JSON: {exc}") from exc
    if isinstance(data, dict) and channel_order is not None:
        data = {**data, "channel_order": channel_order}
    try:
        return Preprocessing.model_validate(data)
    except PydanticValidationError as exc:
        raise InputError(f"preprocessing file {path}: {describe_first_error(exc, with_input=True)}") from exc


def _show(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)
