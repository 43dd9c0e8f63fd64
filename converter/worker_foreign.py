"""The worker's loader for models from other frameworks: ONNX files and scikit-learn estimators.

Both become one ONNX graph (scikit-learn through skl2onnx), which ``converter.onnx_lower``
rewrites into standard ops and onnx2tf turns into a SavedModel; from there the conversion is the
SavedModel path's. The *reference* outputs the converted models are validated against are the
source framework's own: onnxruntime on the file as given, or the estimator's ``predict_proba`` /
``predict``. Runs only inside ``converter.worker``: unpickling runs code, and it does so in this
subprocess, on the one file the operator passed.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converter.worker_load import PREDICT_BATCH, InputProblemError, Loaded, load_saved_model

ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}
"""What skl2onnx writes: opset 17 and the ONNX-ML ops (version 3) the rewrite reads."""
AGREEMENT = 1e-4
"""Largest difference (relative to the reference's range) allowed between the SavedModel that
onnx2tf wrote and the source framework, checked on evaluation rows before any mode converts."""
SCALERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler")


def load_foreign(job: dict[str, Any], tf: Any, data: npt.NDArray[np.float32]) -> Loaded:
    """``data``: evaluation inputs, to check that the SavedModel computes what the source does."""
    import onnx

    from converter.onnx_lower import run_onnx

    path = Path(job["model"])
    normalization: list[str] = []
    if job["kind"] == "sklearn":
        estimator = _unpickle(path)
        if job.get("strip_head"):  # its scaler is the recorded preprocessing: data arrive scaled
            estimator = estimator[1:]
        model = _to_onnx(estimator, data)
        reference = _sklearn_predict(estimator)
        steps = getattr(estimator, "steps", None)
        if steps and len(steps) > 1 and type(steps[0][1]).__name__ in SCALERS:
            normalization.append(
                f"{type(steps[0][1]).__name__} (the pipeline's first step, kept in the graph)"
            )
    elif job["kind"] == "torch":
        return _from_torch_export(job, tf, data)
    else:
        try:
            model = onnx.load(str(path))
            onnx.checker.check_model(model)
        except Exception as exc:
            raise InputProblemError(f"{path} is not a valid ONNX model: {exc}") from exc

        floats = [o.name for o in model.graph.output if o.type.tensor_type.elem_type == 1]
        kept = floats[0] if floats else None  # the output the rewrite keeps (none: it refuses)

        def reference(x: Any) -> Any:
            return _batched(lambda part: run_onnx(model, part, kept), x)

    what = "scikit-learn estimator exported with skl2onnx, " if job["kind"] == "sklearn" else ""
    return from_onnx(model, reference, job, tf, data, normalization, what)


def from_onnx(
    model: Any,
    reference: Callable[[Any], Any],
    job: dict[str, Any],
    tf: Any,
    data: npt.NDArray[np.float32],
    normalization: list[str],
    what: str,
) -> Loaded:
    """The ONNX graph rewritten, converted by onnx2tf and checked against ``reference``."""
    from converter.onnx_lower import LoweringError, lower

    path = Path(job["model"])
    if len(model.graph.input) != 1:
        raise InputProblemError(f"the ONNX model has {len(model.graph.input)} inputs; one is supported")
    try:
        lowered = lower(model)
    except LoweringError as exc:
        raise InputProblemError(f"{path}: {exc}") from exc
    dims = lowered.graph.input[0].type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in list(dims)[1:]]
    if len(declared) != data.ndim - 1 or any(
        d is not None and d != a for d, a in zip(declared, data.shape[1:], strict=False)
    ):
        shown = ", ".join("?" if d is None else str(d) for d in declared)
        raise InputProblemError(f"evaluation x has shape {data.shape} but the model takes (N, {shown})")
    saved = _onnx2tf(lowered, Path(job["work"]) / "onnx2tf", data.shape[1:])
    loaded = load_saved_model(str(saved), tf)
    converted = loaded.predict(data[:PREDICT_BATCH])
    expected = np.asarray(reference(data[:PREDICT_BATCH]), np.float32).reshape(converted.shape[0], -1)
    flat = converted.reshape(converted.shape[0], -1)
    span = float(np.ptp(expected)) or 1.0
    if flat.shape != expected.shape or float(np.max(np.abs(flat - expected))) > AGREEMENT * max(span, 1.0):
        raise InputProblemError(
            f"onnx2tf's SavedModel does not compute what {path.name} does (outputs {flat.shape} vs "
            f"{expected.shape}, largest difference "
            f"{float(np.max(np.abs(flat - expected))) if flat.shape == expected.shape else 'n/a'})"
        )
    loaded.replace_reference(lambda x: np.asarray(reference(x), np.float32).reshape(len(x), -1))
    loaded.normalization = normalization
    loaded.float32_weight_bytes = sum(int(np.prod(i.dims)) * 4 for i in lowered.graph.initializer)
    loaded.changes.append(
        f"{what}ONNX graph of {len(lowered.graph.node)} standard ops converted with onnx2tf"
    )
    return loaded


def _from_torch_export(job: dict[str, Any], tf: Any, data: npt.NDArray[np.float32]) -> Loaded:
    """The ONNX file ``converter.torch_export`` wrote, checked against the module's own outputs
    on the evaluation set (which that child also wrote; torch never loads in this process)."""
    import onnx

    from converter.onnx_lower import run_onnx
    from converter.torch_export import ONNX_FILE, REFERENCE_FILE

    work = Path(job["work"])
    model = onnx.load(str(work / ONNX_FILE))
    module_outputs = np.load(work / REFERENCE_FILE)

    def reference(x: Any) -> Any:
        # the evaluation rows (or their head): the module's outputs; anything else: its export
        if len(x) <= len(data) and np.array_equal(x, data[: len(x)]):
            return module_outputs[: len(x)]
        return _batched(lambda part: run_onnx(model, part), x)

    return from_onnx(model, reference, job, tf, data, [], "PyTorch module exported to ONNX, ")


def _unpickle(path: Path) -> Any:
    import joblib

    try:
        estimator = joblib.load(path)
    except Exception as exc:
        raise InputProblemError(
            f"{path} cannot be loaded with joblib/pickle: {type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(estimator, "predict"):
        raise InputProblemError(f"{path} holds a {type(estimator).__name__}, not a scikit-learn estimator")
    return estimator


def _sklearn_predict(estimator: Any) -> Any:
    from sklearn.base import is_classifier

    classifier = is_classifier(estimator) and hasattr(estimator, "predict_proba")

    def predict(x: Any) -> Any:
        out = estimator.predict_proba(x) if classifier else estimator.predict(x)
        return np.asarray(out, np.float32).reshape(len(x), -1)

    return predict


def _to_onnx(estimator: Any, data: npt.NDArray[np.float32]) -> Any:
    from skl2onnx import to_onnx

    last = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = {type(last): {"zipmap": False}} if hasattr(last, "predict_proba") else None
    try:
        return to_onnx(estimator, data[:1], options=options, target_opset=ONNX_OPSETS)
    except Exception as exc:
        steps = [type(s).__name__ for _, s in getattr(estimator, "steps", [])] or [type(estimator).__name__]
        raise InputProblemError(
            f"skl2onnx cannot export this {type(estimator).__name__} (steps: {', '.join(steps)}): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def _onnx2tf(model: Any, folder: Path, sample_shape: tuple[int, ...]) -> Path:
    """The SavedModel onnx2tf writes for ``model``, converted once per conversion (kept in the
    conversion's work folder for a worker restarted after another mode crashed)."""
    import onnx

    if (folder / "saved_model.pb").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    value = model.graph.input[0]
    dims = value.type.tensor_type.shape.dim
    if any(not d.HasField("dim_value") for d in list(dims)[1:]):
        shown = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims]
        raise InputProblemError(
            f"the ONNX input {value.name} has shape {shown}: dimensions other than the batch must be "
            f"fixed for TFLite (the data's samples are {list(sample_shape)}); export it with a fixed shape"
        )
    source = folder.parent / "lowered.onnx"
    onnx.save(model, str(source))
    import onnx2tf

    # onnx2tf prints its progress table to stdout; the worker's stdout is the parent's log tail
    with contextlib.redirect_stdout(io.StringIO()):
        onnx2tf.convert(
            input_onnx_file_path=str(source),
            output_folder_path=str(folder),
            non_verbose=True,
            # NCHW/NCW inputs stay as exported: callers send what the ONNX model takes
            keep_shape_absolutely_input_names=[value.name] if len(dims) >= 3 else None,
        )
    for stale in folder.glob("*.tflite"):  # its own float32/float16 files: the worker converts each mode
        os.unlink(stale)
    return folder


def _batched(run: Any, x: Any) -> Any:
    return np.concatenate([run(x[i : i + PREDICT_BATCH]) for i in range(0, len(x), PREDICT_BATCH)])
