"""Calibration and evaluation data, labels, and the checks made before anything is converted."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converter.errors import InputError
from converter.images import ImagePreprocessing, load_image_folder
from protocol.manifest import TaskKind

MIN_CALIBRATION_SAMPLES = 100
"""Fewer calibration samples than this give int8 ranges that may not cover real inputs."""


@dataclass(frozen=True)
class Dataset:
    x: npt.NDArray[Any]
    """float32 once loaded (``_checked`` casts); other dtypes only while a file is being read."""
    y: npt.NDArray[Any] | None


DATA_KINDS = (
    ".npz (x, and y for evaluation), .npy (x only) or .csv (numeric; for evaluation the last column is y)"
)


def load_data(
    path: Path,
    role: str,
    need_y: bool,
    input_shape: list[int | None] | None = None,
    image_preprocessing: ImagePreprocessing = "scale01",
) -> Dataset:
    """Calibration or evaluation data from ``.npz``, ``.npy`` or ``.csv`` (or, for calibration, a
    folder of images shaped to ``input_shape``), as float32 ``x``."""
    if not path.exists():
        raise InputError(f"{role} file {path} does not exist")
    if path.is_dir():
        if need_y:
            raise InputError(f"{role} {path} is a folder; {role} data needs targets: use {DATA_KINDS}")
        x = load_image_folder(path, role, input_shape, image_preprocessing)
        return Dataset(x=x, y=None)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path, role, need_y)
    if suffix == ".npy":
        if need_y:
            raise InputError(f"{role} file {path} is a .npy array without targets; give an .npz with x and y")
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{role} file {path} is not a readable .npy array: {exc}") from exc
        return _checked(Dataset(x=x, y=None), role, path)
    if suffix == ".csv":
        return _load_csv(path, role, need_y)
    raise InputError(f"{role} file {path} is not a supported kind; use {DATA_KINDS}")


def _load_csv(path: Path, role: str, need_y: bool) -> Dataset:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{role} file {path} is not readable UTF-8 text: {exc}") from exc
    rows = [line for line in text.splitlines() if line.strip()]
    if rows and not _numeric_row(rows[0]):
        rows = rows[1:]  # a header
    try:
        table = np.array([[float(v) for v in row.split(",")] for row in rows], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{role} file {path} holds a value that is not a number: {exc}") from exc
    if table.ndim != 2 or len(table) == 0:
        raise InputError(f"{role} file {path} holds no rows of equal length")
    if need_y:
        if table.shape[1] < 2:
            raise InputError(f"{role} file {path} needs at least one feature column and the target column")
        return _checked(Dataset(x=table[:, :-1], y=table[:, -1]), role, path)
    return _checked(Dataset(x=table, y=None), role, path)


def _numeric_row(row: str) -> bool:
    try:
        [float(v) for v in row.split(",")]
    except ValueError:
        return False
    return True


def _checked(data: Dataset, role: str, path: Path) -> Dataset:
    x = data.x
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{role} x in {path} has dtype {x.dtype}; real numbers are needed")
    if x.ndim < 1 or x.shape[0] == 0:
        raise InputError(f"{role} x in {path} holds no samples")
    return Dataset(x=np.ascontiguousarray(x, dtype=np.float32), y=data.y)


def load_npz(path: Path, role: str, need_y: bool) -> Dataset:
    """Read ``x`` (or the single array inside) and, when asked, ``y`` from an ``.npz`` file."""
    if not path.is_file():
        raise InputError(f"{role} file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{role} file {path} is not a readable .npz archive: {exc}") from exc
    if "x" in arrays:
        x = arrays["x"]
    elif len(arrays) == 1 and not need_y:
        x = next(iter(arrays.values()))
    else:
        raise InputError(
            f"{role} file {path} must hold an array named 'x'"
            + (" and one named 'y'" if need_y else " (or exactly one array)")
            + f"; it holds {', '.join(sorted(arrays)) or 'nothing'}"
        )
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{role} x in {path} has dtype {x.dtype}; real numbers are needed")
    if x.ndim < 1 or x.shape[0] == 0:
        raise InputError(f"{role} x in {path} holds no samples")
    y = None
    if need_y:
        if "y" not in arrays:
            raise InputError(
                f"{role} file {path} has no 'y' (labels or targets); it holds {', '.join(sorted(arrays))}"
            )
        y = arrays["y"]
        if y.shape[:1] != x.shape[:1]:
            raise InputError(
                f"{role} file {path}: x has {x.shape[0]} samples but y has {y.shape[0] if y.ndim else 0}"
            )
    return Dataset(x=np.ascontiguousarray(x, dtype=np.float32), y=y)


def load_multi_input_npz(path: Path, role: str, count: int) -> tuple[list[npt.NDArray[np.float32]], Dataset]:
    """Inputs of a model with ``count`` inputs: an ``.npz`` with ``x_0`` .. ``x_{count-1}`` and ``y``.

    The returned ``Dataset`` holds ``x_0`` as ``x`` (for the baseline's input ranges) and ``y``.
    """
    names = [f"x_{i}" for i in range(count)]
    if path.suffix.lower() != ".npz":
        raise InputError(
            f"the model has {count} inputs: give {role} data as an .npz with {', '.join(names)} and y"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{role} file {path} is not a readable .npz archive: {exc}") from exc
    missing = [name for name in [*names, "y"] if name not in arrays]
    if missing:
        raise InputError(
            f"{role} file {path} lacks {', '.join(missing)}: the model has {count} inputs, so it needs "
            f"{', '.join(names)} (one array per input, in the model's input order) and y; "
            f"it holds {', '.join(sorted(arrays)) or 'nothing'}"
        )
    xs = [_checked(Dataset(x=arrays[name], y=None), f"{role} {name}", path).x for name in names]
    y = arrays["y"]
    if any(len(x) != len(y) for x in xs):
        raise InputError(f"{role} file {path}: {', '.join(names)} and y hold different numbers of samples")
    return xs, Dataset(x=xs[0], y=y)


def check_against_input(data: Dataset, role: str, input_shape: list[int | None]) -> None:
    """Shape (batch dimension free) and finiteness of ``data.x`` for a model input."""
    expected = input_shape[1:]
    actual = list(data.x.shape[1:])
    compatible = len(expected) == len(actual) and all(
        e is None or e == a for e, a in zip(expected, actual, strict=True)
    )
    if not compatible:
        shown = "(N, " + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise InputError(f"{role} x has shape {tuple(data.x.shape)} but the model takes {shown}")
    check_finite(data.x, f"{role} x")


def check_finite(values: npt.NDArray[Any], what: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - np.count_nonzero(finite))
        first = int(np.argwhere(~finite.reshape(len(values), -1).all(axis=1))[0][0])
        raise InputError(
            f"{what} holds {bad} non-finite values (NaN or inf), first in sample {first}; clean the data"
        )


def check_targets(data: Dataset, task: TaskKind, output_shape: list[int | None]) -> npt.NDArray[Any]:
    """Evaluation ``y`` in the form the metrics need: class indices, or float targets."""
    assert data.y is not None
    y = data.y
    if task is TaskKind.CLASSIFICATION:
        classes = output_shape[-1]
        if y.ndim == 2 and y.shape[1] > 1:  # one-hot
            y = np.argmax(y, axis=1)
        y = y.reshape(len(y))
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
                raise InputError(
                    "evaluation y must hold integer class labels (or one-hot rows) for classification"
                )
            y = y.astype(np.int64)
        if classes is not None and (y.min() < 0 or y.max() >= classes):
            raise InputError(
                f"evaluation y holds class labels outside 0..{classes - 1}, the model's {classes} classes"
            )
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise InputError(f"evaluation y has dtype {y.dtype}; {task.value} needs numeric targets")
    y = y.astype(np.float32)
    check_finite(y, "evaluation y")
    return y.reshape(len(y), -1)


def load_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"labels file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"labels file {path} is not readable UTF-8 text: {exc}") from exc
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels or any(not label for label in labels):
        raise InputError(f"labels file {path} must hold one non-empty label per line")
    return labels


def labels_text(labels: list[str]) -> bytes:
    return "".join(f"{label}\n" for label in labels).encode("utf-8")
