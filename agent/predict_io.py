"""Prediction requests and responses on the wire: JSON, raw float32 and ``.npz`` bodies.

Everything a caller sends is checked here against the manifest (names, count, shapes, dtypes,
finite values, the instance limit) and refused with a ``BadInputError`` that says what was
expected, before any array reaches the interpreter. Forms:

- JSON ``{"inputs": [...]}`` (a single-input model: one instance or a batch) or
  ``{"inputs": {"<input name>": [...], ...}}`` (any model: every input by name);
- ``application/octet-stream``: little-endian float32 instances back to back (single-input);
- ``application/x-npz``: a NumPy ``.npz`` archive with one array per input, keyed by name (a
  single-input model also takes one array under any name). Float arrays are real values; an
  integer array in a quantized input's own dtype is taken as already quantized.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import BadInputError
from agent.npz_codec import read_npz, write_npz
from agent.serving import ActiveModel, PredictResult
from protocol.manifest import TensorSpec

NPZ = "application/x-npz"
BINARY = "application/octet-stream"


def describe_expected(spec: TensorSpec, dtype: str = "float32") -> str:
    instance = ["N" if d == -1 else str(d) for d in spec.instance_shape]
    one = "[" + ", ".join(instance) + "]"
    batch = "[" + ", ".join(["N", *instance]) + "]"
    return f"one instance of shape {one} or a batch of shape {batch}, of finite numbers ({dtype})"


def _caller_dtype(model: ActiveModel, position: int) -> str:
    return "float32" if model.takes_floats(position) else str(model.loaded.inputs[position].dtype)


def _shape_matches(expected: list[int], actual: tuple[int, ...]) -> bool:
    return len(expected) == len(actual) and all(e in (-1, a) for e, a in zip(expected, actual, strict=True))


def _as_batch(array: npt.NDArray[Any], spec: TensorSpec, what: str, expected: str) -> npt.NDArray[Any]:
    """One instance or a batch of the spec's instance shape -> a batch."""
    instance = spec.instance_shape
    if _shape_matches(instance, array.shape):
        return array[np.newaxis]
    if array.ndim == len(instance) + 1 and _shape_matches(instance, array.shape[1:]) and array.shape[0] >= 1:
        return array
    raise BadInputError(f"{what} has shape {list(array.shape)}; expected {expected}")


def all_finite(array: npt.NDArray[Any]) -> bool:
    """NaN and infinities propagate through min and max: two reductions, no temporary array."""
    return array.size == 0 or bool(np.isfinite(array.min()) and np.isfinite(array.max()))


def _finite(array: npt.NDArray[Any], what: str, expected: str) -> npt.NDArray[Any]:
    if array.dtype.kind == "f" and not all_finite(array):
        raise BadInputError(
            f"{what} holds NaN or infinite values (or numbers too large for float32); expected {expected}"
        )
    return array


def _kind_name(array: npt.NDArray[Any]) -> str:
    return {"U": "strings", "S": "strings", "b": "booleans", "O": "null or mixed values"}.get(
        array.dtype.kind, str(array.dtype)
    )


def parse_json_tensor(value: object, model: ActiveModel, position: int, what: str) -> npt.NDArray[Any]:
    """One input's JSON value -> a checked batch (float32 real values, or the tensor's integers)."""
    spec = model.manifest.inputs[position]
    dtype = _caller_dtype(model, position)
    expected = describe_expected(spec, dtype)
    if not isinstance(value, list):
        raise BadInputError(f"{what} must be a nested list: {expected}")
    try:
        array = np.array(value)
    except ValueError as exc:  # ragged lists
        raise BadInputError(f"{what} is ragged (rows of different lengths); expected {expected}") from exc
    if array.dtype.kind not in "iuf":
        raise BadInputError(f"{what} must hold only numbers (got {_kind_name(array)}); expected {expected}")
    batch = _as_batch(array, spec, what, expected)
    if dtype == "float32":
        return _finite(np.asarray(batch, dtype=np.float32), what, expected)
    if batch.dtype.kind == "f":
        raise BadInputError(f"{what} must hold whole numbers ({dtype}); expected {expected}")
    return batch


def parse_json_inputs(value: object, model: ActiveModel) -> list[npt.NDArray[Any]]:
    """``"inputs"``: a nested list (single-input models) or an object keyed by input name."""
    specs = model.manifest.inputs
    names = [spec.name for spec in specs]
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        missing = [name for name in names if name not in value]
        if unknown or missing:
            raise BadInputError(
                f'"inputs" must name every input of the model ({", ".join(names)}); '
                + (
                    f"unknown: {', '.join(map(str, unknown))}"
                    if unknown
                    else f"missing: {', '.join(missing)}"
                )
            )
        arrays = [parse_json_tensor(value[n], model, i, f'"inputs"["{n}"]') for i, n in enumerate(names)]
        return _same_count(arrays, names)
    if len(specs) != 1:
        raise BadInputError(
            f'this model takes {len(specs)} inputs: send "inputs" as an object keyed by name '
            f"({', '.join(names)})"
        )
    return [parse_json_tensor(value, model, 0, '"inputs"')]


def _same_count(arrays: list[npt.NDArray[Any]], names: list[str]) -> list[npt.NDArray[Any]]:
    counts = {name: int(a.shape[0]) for name, a in zip(names, arrays, strict=True)}
    if len(set(counts.values())) != 1:
        raise BadInputError(f"every input must hold the same number of instances, got {counts}")
    return arrays


def parse_float32_body(body: bytes, model: ActiveModel) -> list[npt.NDArray[Any]]:
    """``application/octet-stream``: little-endian float32 instances back to back."""
    if len(model.manifest.inputs) != 1:
        raise BadInputError(f"this model takes {len(model.manifest.inputs)} inputs: send {NPZ} or JSON")
    instance = model.input_spec.instance_shape
    if any(d == -1 for d in instance):
        raise BadInputError("this model has a variable dimension: send JSON, binary bodies need fixed shapes")
    if not model.takes_floats(0):
        raise BadInputError(f"this model's input is {model.loaded.inputs[0].dtype}: send {NPZ} or JSON")
    per = int(np.prod(instance)) if instance else 1
    if len(body) == 0 or len(body) % (4 * per):
        raise BadInputError(
            f"the binary body is {len(body)} bytes; expected a multiple of {4 * per} "
            f"(float32 little-endian instances of shape {instance})"
        )
    # A read-only view of the body (no copy on a little-endian host): set_tensor copies it in.
    batch = np.asarray(np.frombuffer(body, dtype="<f4"), dtype=np.float32).reshape(
        [len(body) // (4 * per), *instance]
    )
    if not all_finite(batch):
        raise BadInputError("the binary body holds NaN or infinite values")
    return [batch]


def parse_npz_body(body: bytes, model: ActiveModel, max_bytes: int) -> list[npt.NDArray[Any]]:
    """``application/x-npz``: one array per input, keyed by input name."""
    arrays = read_npz(body, max_bytes)
    names = [spec.name for spec in model.manifest.inputs]
    if len(names) == 1 and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    if sorted(arrays) != sorted(names):
        raise BadInputError(f"the .npz body holds {sorted(arrays)}; the model's inputs are {names}")
    batches = [_npz_tensor(arrays[name], model, i, name) for i, name in enumerate(names)]
    return _same_count(batches, names)


def _npz_tensor(array: npt.NDArray[Any], model: ActiveModel, position: int, name: str) -> npt.NDArray[Any]:
    spec = model.manifest.inputs[position]
    detail = model.loaded.inputs[position]
    dtype = _caller_dtype(model, position)
    expected = describe_expected(spec, dtype)
    what = f"the .npz array {name!r}"
    if array.dtype.kind not in "iuf":
        raise BadInputError(f"{what} must hold numbers (got {_kind_name(array)}); expected {expected}")
    batch = _as_batch(array, spec, what, expected)
    if batch.dtype == detail.dtype and batch.dtype.kind in "iu":  # already quantized (e.g. int8)
        return batch
    if dtype == "float32":
        return _finite(np.asarray(batch, dtype=np.float32), what, expected)
    if batch.dtype.kind == "f":
        raise BadInputError(f"{what} must hold whole numbers ({dtype}); expected {expected}")
    return batch


def response_npz(result: PredictResult) -> bytes:
    """Every output keyed by name, float32 (``numpy.load`` reads it)."""
    return write_npz(dict(zip(result.names, result.tensors, strict=True)))


def shapes_header(result: PredictResult) -> str:
    """``name=1,10;name2=1,10,4``: every output's shape (names are URL-quoted)."""
    from urllib.parse import quote

    return ";".join(
        f"{quote(name, safe='')}={','.join(str(d) for d in tensor.shape)}"
        for name, tensor in zip(result.names, result.tensors, strict=True)
    )


def response_json(model: ActiveModel, result: PredictResult, top_k: int) -> dict[str, Any]:
    """A single-output model keeps the plain form (``"outputs": [...]``); a model with several
    outputs answers ``"outputs": {name: [...]}`` and ``"shapes": {name: [...]}``."""
    response: dict[str, Any] = {"model": {"name": model.manifest.name, "version": model.manifest.version}}
    if len(result.tensors) == 1:
        response["outputs"] = result.tensors[0].tolist()
    else:
        response["outputs"] = {n: t.tolist() for n, t in zip(result.names, result.tensors, strict=True)}
        response["shapes"] = {n: list(t.shape) for n, t in zip(result.names, result.tensors, strict=True)}
    predictions = result.predictions
    if predictions is not None:
        response["predictions"] = [p.as_json() for p in predictions]
        if top_k > 1:
            for entry, top in zip(response["predictions"], result.top(top_k), strict=True):
                entry["top"] = [t.as_json() for t in top]
    if result.out_of_range:
        response["out_of_range"] = result.out_of_range
    return response


def binary_answer(npz: bool, model: ActiveModel, result: PredictResult) -> tuple[str, bytes, str]:
    """Content type, body and extra header lines of a binary answer: every output by name
    (``.npz``), or the primary output as little-endian float32."""
    extra = f"X-Model: {model.manifest.name}/{model.manifest.version}\r\n"
    if result.classes is not None:
        extra += f"X-Classes: {','.join(str(c) for c in result.classes.tolist())}\r\n"
    if result.out_of_range:
        extra += f"X-Out-Of-Range: {','.join(str(i) for i in result.out_of_range)}\r\n"
    if npz:
        return NPZ, response_npz(result), extra + f"X-Output-Shapes: {shapes_header(result)}\r\n"
    data = np.ascontiguousarray(result.outputs, dtype="<f4").tobytes()
    return BINARY, data, extra + f"X-Output-Shape: {','.join(str(d) for d in result.outputs.shape)}\r\n"
