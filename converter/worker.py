"""The TensorFlow side of a conversion, run as ``python -m converter.worker JOB.json``.

This is the only module that imports TensorFlow, and it only runs in its own subprocess:
TensorFlow and tflite-runtime cannot share a process, and a TensorFlow crash or hang must end
this process, not the operator's command. The job file names the inputs; the worker writes
``model.tflite``, ``source_outputs.npy`` (the source model's first output on the evaluation set)
and ``result.json`` into the job's ``out_dir``. ``result.json`` is either
``{"ok": true, ...facts}`` or ``{"ok": false, "kind": "input"|"conversion", "message": ...}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocol.manifest import QuantizationMode

RESULT_FILE = "result.json"
MODEL_FILE = "model.tflite"
SOURCE_OUTPUTS_FILE = "source_outputs.npy"

FAULT_ENV = "EDGEFLEET_CONVERTER_FAULT"
"""Test hook: ``abort`` | ``hang`` | ``raise`` makes the worker fail that way before it imports
TensorFlow, so the tests can check how a crash, a hang or an exception at this process boundary
surfaces in the parent, in milliseconds instead of a real TensorFlow failure."""

PREDICT_BATCH = 256


class _InputProblemError(Exception):
    """The model or data cannot be used (reported as an input error, not a conversion failure)."""


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m converter.worker JOB.json", file=sys.stderr)
        return 2
    job: dict[str, Any] = json.loads(Path(argv[0]).read_text())
    out_dir = Path(job["out_dir"])
    _inject_fault(os.environ.get(FAULT_ENV, ""))
    try:
        facts = convert(job, out_dir)
    except _InputProblemError as exc:
        _write_result(out_dir, {"ok": False, "kind": "input", "message": str(exc)})
        return 1
    except Exception as exc:  # every TensorFlow failure is reported to the parent, typed there
        message = f"{type(exc).__name__}: {str(exc).strip()}"
        _write_result(out_dir, {"ok": False, "kind": "conversion", "message": message[:2000]})
        return 1
    _write_result(out_dir, {"ok": True, **facts})
    return 0


def convert(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.monotonic()
    import keras
    import tensorflow as tf

    try:
        model = keras.models.load_model(job["model"], compile=False)
    except Exception as exc:
        raise _InputProblemError(f"{job['model']} cannot be loaded as a Keras model: {exc}") from exc
    if len(model.inputs) != 1:
        raise _InputProblemError(
            f"the model has {len(model.inputs)} inputs; the converter supports one input for now"
        )
    input_shape = [None if d is None else int(d) for d in model.inputs[0].shape]
    output_shapes = [[None if d is None else int(d) for d in output.shape] for output in model.outputs]

    calibration = np.load(job["calibration"])
    evaluation = np.load(job["evaluation"])
    for role, data in (("calibration", calibration), ("evaluation", evaluation)):
        expected = input_shape[1:]
        if len(expected) != data.ndim - 1 or any(
            e is not None and e != a for e, a in zip(expected, data.shape[1:], strict=False)
        ):
            raise _InputProblemError(f"{role} x has shape {data.shape} but the model takes (N, {expected})")

    source = model.predict(evaluation, batch_size=PREDICT_BATCH, verbose=0)
    if isinstance(source, (list, tuple)):
        source = source[0]
    elif isinstance(source, dict):
        source = next(iter(source.values()))
    np.save(out_dir / SOURCE_OUTPUTS_FILE, np.asarray(source, dtype=np.float32))

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    configure(converter, tf, QuantizationMode(job["mode"]), calibration)
    tflite = converter.convert()
    (out_dir / MODEL_FILE).write_bytes(tflite)
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "input_shape": input_shape,
        "output_shapes": output_shapes,
        "float32_weight_bytes": int(sum(int(np.prod(w.shape)) for w in model.weights) * 4),
        "seconds": round(time.monotonic() - started, 3),
    }


def configure(converter: Any, tf: Any, mode: QuantizationMode, calibration: Any) -> None:
    """Set a TFLiteConverter up for one quantization mode."""
    if mode is QuantizationMode.NONE:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode is QuantizationMode.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    elif mode is QuantizationMode.INT8:
        samples = calibration.astype(np.float32)

        def representative() -> Any:
            for i in range(len(samples)):
                yield [samples[i : i + 1]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    # DYNAMIC: Optimize.DEFAULT without calibration data quantizes weights only.


def _inject_fault(fault: str) -> None:
    if fault == "abort":
        os.abort()
    elif fault == "hang":
        signal.pause()
    elif fault == "raise":
        raise RuntimeError("injected fault")


def _write_result(out_dir: Path, result: dict[str, Any]) -> None:
    (out_dir / RESULT_FILE).write_text(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
