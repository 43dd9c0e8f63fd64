"""Captured samples of one model version as the data ``edgefleet convert`` takes.

``.npz``: a single-input model gets ``x`` (the inputs, batch first, float32 real values), which
``--calibration`` reads as it is; a model with several inputs gets ``x_0``, ``x_1``, ... in the
manifest's input order. Beside them, for the operator: ``predicted`` (the primary output the
device answered), ``reason``, ``device`` and ``captured_at`` (Unix milliseconds); ``convert``
ignores them. No ``y``: a device never knows the true label; add one to use the file as
``--evaluation``. CSV (a single input of one feature axis): a header ``f0,f1,...`` and one row
per sample, what ``--calibration`` reads from a ``.csv``.

Only samples whose inputs arrived as real values are exported: an input a caller sent already
quantized is not what calibration takes; their number is reported.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleet.errors import FleetError, NotFoundError
from fleet.storage.capture import StoredSample


@dataclass
class Export:
    data: bytes
    samples: int
    skipped_quantized: int
    input_names: list[str] = field(default_factory=list)


def _collect(
    samples: Iterable[StoredSample], input_names: list[str] | None, primary: str | None
) -> tuple[dict[str, list[Any]], list[str], int]:
    columns: dict[str, list[Any]] = {"predicted": [], "reason": [], "device": [], "captured_at": []}
    names = input_names
    skipped = 0
    for sample in samples:
        if not sample.raw:
            skipped += 1
            continue
        if names is None:
            names = sorted(sample.inputs)
        for name in names:
            if name not in sample.inputs:
                raise FleetError(
                    f"sample {sample.uid} lacks input {name!r}: it holds {sorted(sample.inputs)}"
                )
            columns.setdefault(f"in:{name}", []).append(sample.inputs[name])
        output = sample.outputs.get(primary) if primary else None
        if output is None and sample.outputs:
            output = next(iter(sample.outputs.values()))
        columns["predicted"].append(output)
        columns["reason"].append(sample.reason)
        columns["device"].append(sample.device_id)
        columns["captured_at"].append(int(sample.captured_at.timestamp() * 1000))
    return columns, names or [], skipped


def _stack(values: list[Any], what: str) -> np.ndarray[Any, Any]:
    shapes = {np.shape(v) for v in values}
    if len(shapes) > 1:
        raise FleetError(f"the captured {what} differ in shape ({sorted(shapes)}); export them per shape")
    return np.stack(values)


def export_npz(samples: Iterable[StoredSample], input_names: list[str] | None, primary: str | None) -> Export:
    columns, names, skipped = _collect(samples, input_names, primary)
    count = len(columns["reason"])
    if not count:
        raise NotFoundError(_nothing(skipped))
    arrays: dict[str, Any] = {}
    for position, name in enumerate(names):
        key = "x" if len(names) == 1 else f"x_{position}"
        arrays[key] = _stack(columns[f"in:{name}"], f"inputs {name!r}").astype(np.float32)
    if all(p is not None for p in columns["predicted"]):
        arrays["predicted"] = _stack(columns["predicted"], "outputs").astype(np.float32)
    arrays["reason"] = np.array(columns["reason"], dtype=str)
    arrays["device"] = np.array(columns["device"], dtype=str)
    arrays["captured_at"] = np.array(columns["captured_at"], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return Export(buffer.getvalue(), count, skipped, names)


def export_csv(samples: Iterable[StoredSample], input_names: list[str] | None, primary: str | None) -> Export:
    columns, names, skipped = _collect(samples, input_names, primary)
    count = len(columns["reason"])
    if not count:
        raise NotFoundError(_nothing(skipped))
    if len(names) != 1:
        raise FleetError(f"CSV holds one input; this model has {len(names)} ({', '.join(names)}): use npz")
    x = _stack(columns[f"in:{names[0]}"], "inputs")
    if x.ndim != 2:
        raise FleetError(
            f"CSV holds one feature axis; input {names[0]!r} is shaped {list(x.shape[1:])} "
            "per sample: use npz"
        )
    out = io.StringIO()
    out.write(",".join(f"f{i}" for i in range(x.shape[1])) + "\n")
    for row in x.astype(np.float64):
        out.write(",".join(repr(float(v)) for v in row) + "\n")
    return Export(out.getvalue().encode(), count, skipped, names)


def _nothing(skipped: int) -> str:
    if skipped:
        return (
            f"no sample of this model version holds real input values ({skipped} arrived already "
            "quantized, which calibration cannot use)"
        )
    return "no samples were captured for this model version"
