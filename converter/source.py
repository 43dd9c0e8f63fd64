"""The source model file, inspected without TensorFlow.

Only the model's kind and declared input shape are read here (from the ``.keras`` archive's
``config.json``), so that wrong files and mismatched data fail in a second instead of after a
TensorFlow start. The worker loads the model for real and checks again.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from converter.errors import InputError, UnsupportedModelError


class SourceKind(StrEnum):
    KERAS = "keras"
    """A Keras 3 model archive (``model.save("x.keras")``)."""


SUPPORTED_KINDS = {".keras": SourceKind.KERAS}
SUPPORTED_DESCRIPTION = "a Keras model archive (.keras); SavedModel and ONNX are planned"


@dataclass(frozen=True)
class SourceModel:
    path: Path
    kind: SourceKind
    input_shapes: list[list[int | None]] | None
    """Declared input shapes, batch first, when the file declares them; None if unknown."""


def inspect_source(path: Path) -> SourceModel:
    """Identify the model file and read its declared inputs; raise InputError if it is unusable."""
    if not path.exists():
        raise InputError(f"model file {path} does not exist")
    kind = SUPPORTED_KINDS.get(path.suffix.lower())
    if path.is_dir() or kind is None:
        what = "a directory" if path.is_dir() else f"a {path.suffix or 'suffix-less'} file"
        raise UnsupportedModelError(f"{path} is {what}; the converter reads {SUPPORTED_DESCRIPTION}")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise InputError(
            f"{path} is not a Keras model archive (expected a zip with config.json, as model.save() writes)"
        ) from exc
    return SourceModel(path=path, kind=kind, input_shapes=_keras_input_shapes(config))


def _keras_input_shapes(config: Any) -> list[list[int | None]] | None:
    """Input shapes from the InputLayers of a Sequential or functional model's config."""
    try:
        layers = config["config"]["layers"]
        shapes = []
        for layer in layers:
            if layer.get("class_name") != "InputLayer":
                continue
            layer_config = layer["config"]
            shape = layer_config.get("batch_shape") or layer_config.get("batch_input_shape")
            if shape is None:
                return None
            shapes.append([None if s is None else int(s) for s in shape])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return shapes or None
