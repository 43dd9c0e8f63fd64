"""A scikit-learn Pipeline's leading scaler, read in a subprocess and made the bundle's recorded
preprocessing: ``python -m converter.sklearn_head JOB.json`` writes ``result.json`` with the
scaler's per-feature ``offset`` and ``scale`` (``(x - offset) * scale``), or ``null``.

Why take it out of the graph: a device then scales the raw values in float32 (``runtime.preprocess``)
and an int8 model's input tensor holds standardised features, quantized with one scale that
suits them all; with the scaler inside the graph that one int8 input scale has to span raw
features of different units (the breast-cancer data: 0.05 to 4,000), and the small ones round
away. The parent never unpickles: this child does, on the one file the operator passed.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import InputError
from converter.request import ConversionRequest
from converter.source import SourceKind, SourceModel
from converter.subproc import run_module

HEAD_SCALERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler")


def head_scaler(estimator: Any) -> dict[str, Any] | None:
    """The leading scaler of a Pipeline of at least two steps, as offset/scale; else None."""
    steps = getattr(estimator, "steps", None)
    if not steps or len(steps) < 2:
        return None
    scaler = steps[0][1]
    name = type(scaler).__name__
    if name == "StandardScaler":
        count = int(scaler.n_features_in_)
        mean = scaler.mean_ if scaler.with_mean else np.zeros(count)
        std = scaler.scale_ if scaler.with_std else np.ones(count)
        offset, scale = np.asarray(mean, np.float64), 1.0 / np.asarray(std, np.float64)
    elif name == "MinMaxScaler":  # x * scale_ + min_ == (x - (-min_ / scale_)) * scale_
        scale = np.asarray(scaler.scale_, np.float64)
        offset = -np.asarray(scaler.min_, np.float64) / scale
    elif name == "MaxAbsScaler":
        scale = 1.0 / np.asarray(scaler.scale_, np.float64)
        offset = np.zeros_like(scale)
    else:
        return None
    return {"scaler": name, "offset": offset.tolist(), "scale": scale.tolist()}


def read_head_scaler(request: ConversionRequest, work: Path) -> dict[str, Any] | None:
    """Run the probe for ``request.model``; raise ``InputError`` when the file does not load."""
    outcome = run_module(
        "converter.sklearn_head", {"model": str(request.model.resolve())}, work, request.timeout
    )
    result = outcome.result
    if result is None:
        raise InputError(f"{request.model} could not be read: {outcome.last_words or 'no result'}")
    if not result.get("ok"):
        raise InputError(str(result.get("message")))
    head: dict[str, Any] | None = result.get("head")
    return head


def adopt_head_scaler(
    request: ConversionRequest, source: SourceModel, note: Callable[[str], None]
) -> tuple[ConversionRequest, SourceModel]:
    """For a Pipeline that starts with a scaler (``--sklearn-scaler preprocessing``, the default, and
    no preprocessing given): the request with the scaler as its recorded preprocessing, and the
    source marked to convert the pipeline without it."""
    if source.kind is not SourceKind.SKLEARN or request.sklearn_scaler != "preprocessing":
        return request, source
    if request.preprocessing_given:
        return request, source
    with tempfile.TemporaryDirectory(prefix="edgefleet-sklearn-") as tmp:
        head = read_head_scaler(request, Path(tmp))
    if head is None:
        return request, source
    note(
        f"the pipeline's {head['scaler']} became the recorded preprocessing (devices scale raw values "
        "in float32; the converted graph starts after it); --sklearn-scaler graph keeps it in the graph"
    )
    update: dict[str, Any] = {"preprocess_offset": head["offset"], "preprocess_scale": head["scale"]}
    if head["scaler"] == "StandardScaler":  # recorded as standardize, the same arithmetic
        update = {"preprocess_mean": head["offset"], "preprocess_std": [1.0 / s for s in head["scale"]]}
    return request.model_copy(update=update), replace(source, strip_head=True)


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    out = Path(job["out_dir"]) / "result.json"
    import joblib

    try:
        estimator = joblib.load(job["model"])
    except Exception as exc:
        message = f"{job['model']} cannot be loaded with joblib/pickle: {type(exc).__name__}: {exc}"
        out.write_text(json.dumps({"ok": False, "message": message}))
        return 1
    out.write_text(json.dumps({"ok": True, "head": head_scaler(estimator)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
