"""The source model file, inspected without TensorFlow.

Only the model's kind and declared input shape are read here (from the ``.keras`` archive's
``config.json``), so that wrong files and mismatched data fail in a second instead of after a
TensorFlow start. The worker loads the model for real and checks again.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from converter.errors import InputError, UnsupportedModelError
from converter.extras import ONNX_MODULES, SKLEARN_MODULES, TORCH_MODULES, require


class SourceKind(StrEnum):
    KERAS = "keras"
    """A Keras 3 model archive (``model.save("x.keras")``)."""
    H5 = "h5"
    """A legacy Keras HDF5 file (``model.save("x.h5")``)."""
    SAVED_MODEL = "saved_model"
    """A TensorFlow SavedModel directory (``saved_model.pb`` inside)."""
    FACTORY = "factory"
    """``module:function`` or ``file.py:function`` returning a Keras model."""
    ONNX = "onnx"
    """An ONNX model file (converted with onnx2tf after the ONNX-ML ops are rewritten)."""
    SKLEARN = "sklearn"
    """A pickled or joblib'd scikit-learn estimator or Pipeline (exported with skl2onnx)."""
    TORCH = "torch"
    """``torch:module:function`` returning ``(nn.Module, example input)`` (exported to ONNX)."""


SUPPORTED_KINDS = {
    ".keras": SourceKind.KERAS,
    ".h5": SourceKind.H5,
    ".hdf5": SourceKind.H5,
    ".onnx": SourceKind.ONNX,
    ".joblib": SourceKind.SKLEARN,
    ".pkl": SourceKind.SKLEARN,
    ".pickle": SourceKind.SKLEARN,
}
SUPPORTED_DESCRIPTION = (
    "a Keras model archive (.keras), a Keras HDF5 file (.h5), a SavedModel directory, a "
    "factory module:function / file.py:function returning a Keras model, an ONNX model (.onnx), "
    "a scikit-learn estimator or Pipeline saved with joblib or pickle (.joblib, .pkl), or "
    "torch:module:function / torch:file.py:function returning (nn.Module, example input)"
)
_EXTRA = {
    SourceKind.ONNX: ("converter-onnx", ONNX_MODULES, "ONNX models"),
    SourceKind.SKLEARN: ("converter-sklearn", SKLEARN_MODULES, "scikit-learn models"),
    SourceKind.TORCH: ("converter-torch", TORCH_MODULES, "PyTorch models"),
}
_TORCH_HINT = (
    "; for PyTorch, give a factory as torch:module:function, or export the module with "
    "torch.onnx.export and convert the .onnx file"
)
_HINTS = {
    ".tflite": "; for a ready-made TFLite model use edgefleet bundle",
    ".pt": _TORCH_HINT,
    ".pth": _TORCH_HINT,
    ".pt2": _TORCH_HINT,
}
_FACTORY = re.compile(r"^(?P<target>[\w.]+|.+\.py):(?P<function>[A-Za-z_]\w*)$")


@dataclass(frozen=True)
class SourceModel:
    path: Path
    kind: SourceKind
    input_shapes: list[list[int | None]] | None
    """Declared input shapes, batch first, when the file declares them; None if unknown."""
    strip_head: bool = False
    """scikit-learn: convert the Pipeline without its first step (a scaler that became the
    recorded preprocessing, ``converter.sklearn_head``)."""

    @property
    def reference(self) -> str:
        """What the worker loads: an absolute path, or the factory spec as given."""
        factory = self.kind in (SourceKind.FACTORY, SourceKind.TORCH)
        return str(self.path) if factory else str(self.path.resolve())


def inspect_source(path: Path) -> SourceModel:
    """Identify the model file and read its declared inputs; raise InputError if it is unusable."""
    if str(path).startswith(TORCH_PREFIX):
        return _torch_source(str(path)[len(TORCH_PREFIX) :])
    factory = _FACTORY.match(str(path))
    if factory is not None and not path.exists():
        target = factory.group("target")
        if target.endswith(".py") and not Path(target).is_file():
            raise InputError(f"model factory file {target} does not exist")
        spec = (
            f"{Path(target).resolve()}:{factory.group('function')}" if target.endswith(".py") else str(path)
        )
        return SourceModel(path=Path(spec), kind=SourceKind.FACTORY, input_shapes=None)
    if not path.exists():
        raise InputError(f"model file {path} does not exist")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return SourceModel(path=path, kind=SourceKind.SAVED_MODEL, input_shapes=None)
        raise UnsupportedModelError(
            f"{path} is a directory without saved_model.pb; the converter reads {SUPPORTED_DESCRIPTION}"
        )
    kind = SUPPORTED_KINDS.get(path.suffix.lower())
    if kind is None:
        what = f"a {path.suffix or 'suffix-less'} file"
        hint = _HINTS.get(path.suffix.lower(), "")
        raise UnsupportedModelError(f"{path} is {what}; the converter reads {SUPPORTED_DESCRIPTION}{hint}")
    if kind in _EXTRA:
        require(*_EXTRA[kind])
        return SourceModel(path=path, kind=kind, input_shapes=None)
    if kind is SourceKind.H5:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89HDF\r\n\x1a\n":
                raise InputError(f"{path} is not an HDF5 file (as model.save('x.h5') writes)")
        return SourceModel(path=path, kind=kind, input_shapes=None)
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise InputError(
            f"{path} is not a Keras model archive (expected a zip with config.json, as model.save() writes)"
        ) from exc
    return SourceModel(path=path, kind=kind, input_shapes=_keras_input_shapes(config))


TORCH_PREFIX = "torch:"


def _torch_source(spec: str) -> SourceModel:
    factory = _FACTORY.match(spec)
    if factory is None:
        raise InputError(f"torch:{spec} is not torch:package.module:function or torch:path/file.py:function")
    target = factory.group("target")
    if target.endswith(".py"):
        if not Path(target).is_file():
            raise InputError(f"model factory file {target} does not exist")
        spec = f"{Path(target).resolve()}:{factory.group('function')}"
    require(*_EXTRA[SourceKind.TORCH])
    return SourceModel(path=Path(spec), kind=SourceKind.TORCH, input_shapes=None)


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
