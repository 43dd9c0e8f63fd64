"""The preprocessing a model was trained with, per input: taken from the operator's options (the
simple ``--preprocess*`` flags for a single-input model, or ``--preprocessing-file`` with one
entry per input name), computed from the raw data where asked, recorded in the manifest, and
applied to the raw data with ``runtime.preprocess``, the function the agent applies to requests.
A model that carries its own Keras ``Normalization``/``Rescaling`` layer is recorded as
``in_model`` (the agent applies no arithmetic).

One entry (a flag set or a file entry) holds ``method`` (none, standardize, minmax, scale,
in_model), ``mean``/``std`` (standardize), ``min``/``max`` (minmax), ``scale``/``offset``
(scale), ``channel_order`` (what the model was trained on), ``caller_channel_order`` (what
callers send, default rgb) and ``description``. standardize and minmax without values are
computed per last-axis feature from the raw data (``convert``'s calibration data).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from converter.errors import InputError
from protocol.manifest import Preprocessing
from protocol.validation import describe_first_error
from runtime.preprocess import preprocess

PreprocessingChoice = Literal["none", "standardize", "minmax", "scale"]
ChannelOrder = Literal["rgb", "bgr"]
DEFAULT_CALLER_ORDER: ChannelOrder = "rgb"
"""The colour order callers send unless an entry says otherwise: the agent reverses the last axis
of an input whose model was trained on BGR."""

Values = float | list[float]
Method = PreprocessingChoice | Literal["in_model"]


class Entry(BaseModel):
    """One input's preprocessing as the operator describes it (flags or a file entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method | None = None
    mean: Values | None = None
    std: Values | None = None
    min: Values | None = None
    max: Values | None = None
    scale: Values | None = None
    offset: Values | None = None
    channel_order: ChannelOrder | None = None
    caller_channel_order: ChannelOrder | None = None
    description: str | None = Field(default=None)

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)


FLAG_NAMES = {
    "method": "--preprocessing",
    "mean": "--preprocess-mean",
    "std": "--preprocess-std",
    "min": "--preprocess-min",
    "max": "--preprocess-max",
    "scale": "--preprocess-scale",
    "offset": "--preprocess-offset",
    "channel_order": "--channel-order",
}


def resolve(  # noqa: PLR0913 - one keyword-only parameter per command-line option it resolves
    *,
    method: PreprocessingChoice | None,
    mean: list[float] | None,
    std: list[float] | None,
    scale: list[float] | None,
    offset: list[float] | None,
    file: Path | None,
    channel_order: ChannelOrder | None,
    calibration: npt.NDArray[np.float32],
    minimum: list[float] | None = None,
    maximum: list[float] | None = None,
) -> Preprocessing | None:
    """A single-input model's preprocessing from the flags or a file (None: nothing said)."""
    flags = Entry(
        method=method, mean=mean, std=std, min=minimum, max=maximum, scale=scale, offset=offset,
        channel_order=channel_order,
    )  # fmt: skip
    resolved = resolve_inputs(flags, file, ["input"], [calibration], names_known=False)
    return resolved.get("input")


def resolve_inputs(
    flags: Entry,
    file: Path | None,
    names: Sequence[str],
    data: Sequence[npt.NDArray[Any] | None],
    *,
    names_known: bool = True,
    features: Sequence[int | None] | None = None,
) -> dict[str, Preprocessing]:
    """Per input name, what to record (inputs without an entry are absent).

    ``data``: each input's raw values when there are some to compute statistics from, else
    None. ``names_known``: False for ``convert``, which knows its single input's TFLite name only
    after converting; a file's one entry then applies whatever it is called. ``features``: each
    input's last-axis size when the data do not say it. ``InputError`` for options that
    contradict each other, name no input, or do not fit the input's last axis."""
    if file is not None:
        if not flags.model_copy(update={"channel_order": None}).empty:
            raise InputError(
                "--preprocessing-file gives the whole preprocessing: drop the other --preprocess options"
            )
        entries = _file_entries(file, names, names_known, flags.channel_order)
        many = len(names) > 1
        namers = {
            name: _Names(f"preprocessing file {file}" + (f", input {name!r}" if many else ""))
            for name in entries
        }
    elif flags.empty:
        return {}
    else:
        if len(names) != 1:
            raise InputError(
                f"the model has {len(names)} inputs ({', '.join(names)}): the --preprocess* options "
                "describe one input; give --preprocessing-file with an entry per input name"
            )
        entries, namers = {names[0]: flags}, {names[0]: _Names(None)}
    resolved: dict[str, Preprocessing] = {}
    for position, name in enumerate(names):
        entry = entries.get(name)
        if entry is None:
            continue
        raw = data[position] if position < len(data) else None
        width = _features(raw) if raw is not None else (features[position] if features else None)
        resolved[name] = _resolve_entry(entry, raw, width, namers[name])
    return resolved


class _Names:
    """How messages name an entry's fields: the flags, or the file entry's keys after its place."""

    def __init__(self, where: str | None) -> None:
        self.where = where

    def __call__(self, field: str) -> str:
        return FLAG_NAMES.get(field, field) if self.where is None else field

    def error(self, text: str) -> InputError:
        return InputError(text if self.where is None else f"{self.where}: {text}")


def apply(pre: Preprocessing | None, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Raw values to model inputs, exactly as the agent does it (``runtime.preprocess``)."""
    return preprocess(pre, x)


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
    return Preprocessing(
        method="in_model",
        channel_order=given.channel_order if given is not None else None,
        caller_channel_order=given.caller_channel_order if given is not None else None,
        description=f"the model normalises its inputs itself ({names})",
    )


def _resolve_entry(
    entry: Entry, raw: npt.NDArray[Any] | None, features: int | None, name: _Names
) -> Preprocessing:
    """One entry to the manifest's form; ``raw``: the input's raw data, for computed statistics."""
    order = _orders(entry, name)
    method = entry.method
    given = [
        field
        for field in ("mean", "std", "min", "max", "scale", "offset")
        if getattr(entry, field) is not None
    ]
    method = _method(method, given, name)
    description = entry.description
    if method == "standardize" and set(given) & {"mean", "std"}:
        mean, std = _pair(entry.mean, entry.std, name("mean"), name("std"), name)
        if any(v <= 0 for v in std):
            raise name.error(f"{name('std')} {_show(std)}: every standard deviation must be positive")
        offsets = _fit(mean, features, name("mean"), name)
        scales = [1.0 / v for v in _fit(std, features, name("std"), name)]
        text = f"standardized with the given mean {_show(mean)} and std {_show(std)}"
        return _made("standardize", scales, offsets, {**order, "description": description or text}, name)
    if method == "minmax" and set(given) & {"min", "max"}:
        low, high = _pair(entry.min, entry.max, name("min"), name("max"), name)
        low, high = _fit(low, features, name("min"), name), _fit(high, features, name("max"), name)
        if len(low) != len(high) and 1 not in (len(low), len(high)):
            raise name.error(f"{name('min')} and {name('max')} give different numbers of values")
        lows, highs = np.broadcast_arrays(np.asarray(low, np.float64), np.asarray(high, np.float64))
        if np.any(highs <= lows):
            raise name.error(
                f"{name('max')} {_show(high)} must be above {name('min')} {_show(low)} everywhere"
            )
        text = f"min-max scaled to [0, 1] with the given min {_show(low)} and max {_show(high)}"
        scales = [float(1.0 / v) for v in (highs - lows)]
        return _made(
            "minmax", scales, [float(v) for v in lows], {**order, "description": description or text}, name
        )
    if method == "scale" and entry.scale is None:
        raise name.error(f"{name('method')} scale needs {name('scale')} (and optionally {name('offset')})")
    if method in ("scale", "standardize", "minmax") and given:
        # scale; or standardize/minmax in the manifest's own form (offset = mean, scale = 1/std).
        scale = _fit(_listed(entry.scale if entry.scale is not None else 1.0), features, name("scale"), name)
        offset = _fit(
            _listed(entry.offset if entry.offset is not None else 0.0), features, name("offset"), name
        )
        text = ("" if method == "scale" else f"{method}: ") + f"(x - {_show(offset)}) * {_show(scale)}"
        return _made(method, scale, offset, {**order, "description": description or text}, name)
    if method in ("standardize", "minmax"):
        if raw is None:
            values = "mean and std" if method == "standardize" else "min and max"
            raise name.error(
                f"{name('method')} {method} without values computes them from the calibration data, and "
                f"there is none here: give the {values} the model was trained with"
            )
        return _computed(method, raw, order, description, name)
    if method == "in_model":
        return Preprocessing(method="in_model", **order, description=description or "")
    return Preprocessing(method="none", **order, description=description or "raw values")


def _method(method: Method | None, given: list[str], name: _Names) -> Method | None:
    """The method the entry describes: named, or implied by the values given (which must agree)."""
    families = {"standardize": {"mean", "std"}, "minmax": {"min", "max"}, "scale": {"scale", "offset"}}
    implied = sorted(family for family, fields in families.items() if fields & set(given))
    named = "/".join(name(field) for field in given)
    if method in ("none", "in_model") and given:
        raise name.error(f"preprocessing method {method!r} takes no scale or offset (got {named})")
    if len(implied) > 1:
        raise name.error(f"{named} describe different methods ({', '.join(implied)}): give the values of one")
    # A file entry may be in the manifest's own form (standardize with offset = mean, scale = 1/std).
    manifest_form = name.where is not None and method in ("standardize", "minmax") and implied == ["scale"]
    if implied and method not in (None, implied[0]) and not manifest_form:
        raise name.error(f"{named} describe {name('method')} {implied[0]}, not {method}")
    if method is not None:
        return method
    return cast("Method", implied[0]) if implied else None


def _orders(entry: Entry, name: _Names) -> dict[str, Any]:
    """``channel_order`` and ``caller_channel_order`` as recorded: the caller's order only when it
    differs from the model's (then the agent reverses the last axis; an agent that predates the
    field refuses such a manifest rather than feed the wrong order)."""
    if entry.channel_order is None:
        if entry.caller_channel_order is not None:
            raise name.error("caller_channel_order needs channel_order, the order the model was trained on")
        return {"channel_order": None, "caller_channel_order": None}
    caller = entry.caller_channel_order or DEFAULT_CALLER_ORDER
    return {
        "channel_order": entry.channel_order,
        "caller_channel_order": None if caller == entry.channel_order else caller,
    }


def _computed(
    method: Literal["standardize", "minmax"],
    calibration: npt.NDArray[Any],
    order: dict[str, Any],
    description: str | None,
    name: _Names,
) -> Preprocessing:
    """Per feature of the last axis, from the raw data in the model's channel order (float64 sums)."""
    data = np.asarray(calibration)
    if order["caller_channel_order"] is not None:
        data = data[..., ::-1]
    flat = data.reshape(-1, data.shape[-1] if data.ndim > 1 else 1).astype(np.float64)
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
    scales, offsets = [float(1.0 / s) for s in spread], [float(o) for o in offset]
    return _made(method, scales, offsets, {**order, "description": description or what}, name)


def _made(
    method: PreprocessingChoice,
    scale: list[float],
    offset: list[float],
    fields: dict[str, Any],
    name: _Names,
) -> Preprocessing:
    """Rounded to float32 (what the agent computes with), a single value when all are one."""

    def value(values: list[float]) -> float | list[float]:
        as32 = [float(np.float32(v)) for v in values]
        return as32[0] if len(as32) == 1 else as32

    try:
        return Preprocessing(method=method, scale=value(scale), offset=value(offset), **fields)
    except PydanticValidationError as exc:
        raise name.error(f"preprocessing: {describe_first_error(exc)}") from exc


def _pair(
    first: Values | None, second: Values | None, first_name: str, second_name: str, name: _Names
) -> tuple[list[float], list[float]]:
    if first is None or second is None:
        raise name.error(f"give both {first_name} and {second_name}")
    return _listed(first), _listed(second)


def _listed(values: Values) -> list[float]:
    return list(values) if isinstance(values, list) else [values]


def _features(data: npt.NDArray[Any]) -> int:
    return int(data.shape[-1]) if data.ndim > 1 else 1


def _fit(values: list[float], features: int | None, option: str, name: _Names) -> list[float]:
    if not values:
        raise name.error(f"{option} is empty: give 1 value or one per feature of the last axis")
    if features is not None and features > 0 and len(values) not in (1, features):
        raise name.error(
            f"{option} has {len(values)} values but the inputs' last axis has {features}: "
            f"give 1 or {features}"
        )
    return values


def _file_entries(
    path: Path, names: Sequence[str], names_known: bool, channel_order: ChannelOrder | None
) -> dict[str, Entry]:
    """The file's entries by input name: one object (a single-input model) or an object of
    objects keyed by input name."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"preprocessing file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"preprocessing file {path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"preprocessing file {path} must hold a JSON object")
    per_input = bool(data) and all(isinstance(v, dict) for v in data.values())
    if not per_input:
        if len(names) != 1:
            raise InputError(
                f"preprocessing file {path} holds one entry but the model has {len(names)} inputs "
                f"({', '.join(names)}): key the entries by input name"
            )
        data = {names[0]: data}
    elif not names_known:
        if len(data) != 1:
            raise InputError(
                f"preprocessing file {path} names {len(data)} inputs ({', '.join(data)}); "
                "convert takes models with one input"
            )
        data = {names[0]: next(iter(data.values()))}
    elif unknown := [key for key in data if key not in names]:
        raise InputError(
            f"preprocessing file {path} names {', '.join(map(repr, unknown))}, not an input of the "
            f"model; its inputs are {', '.join(names)}"
        )
    if channel_order is not None:
        if len(data) != 1:
            raise InputError("--channel-order describes one input: put channel_order in each file entry")
        data = {key: {**value, "channel_order": channel_order} for key, value in data.items()}
    entries = {}
    for name, value in data.items():
        where = f"preprocessing file {path}" + (f", input {name!r}" if len(names) > 1 else "")
        try:
            entries[name] = Entry.model_validate(value)
        except PydanticValidationError as exc:
            raise InputError(f"{where}: {describe_first_error(exc, with_input=True)}") from exc
    return entries


def _show(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)
