"""The TensorFlow side of a conversion, run as ``python -m converter.worker JOB.json``.

This is the only module that imports TensorFlow, and it only runs in its own subprocess:
TensorFlow and tflite-runtime cannot share a process, and a TensorFlow crash or hang must end
this process, not the operator's command. One worker converts one or more modes of one model
(TensorFlow starts and the model loads once). It writes into the job's ``out_dir``:

- ``facts.json`` once the model is loaded (versions, shapes, recurrent and normalisation layers,
  what was changed);
- ``source_outputs.npy``: the source model's first output on the evaluation set;
- ``current.txt``: the mode being converted now, so that the parent knows which one a crash hit;
- per mode, ``model-MODE.tflite`` and ``mode-MODE.json`` (``{"ok": true, "ops": [...]}`` or
  ``{"ok": false, "kind": "conversion"|"select_ops"|"recurrent", "message": ...}``);
- ``debug-int8.json`` when the job asks for the int8 per-layer report;
- ``result.json``: ``{"ok": true}``, or ``{"ok": false, "kind": "input", "message": ...}``.
"""

from __future__ import annotations

import csv
import faulthandler
import io
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.worker_load import InputProblemError, load
from protocol.manifest import QuantizationMode

RESULT_FILE = "result.json"
FACTS_FILE = "facts.json"
CURRENT_FILE = "current.txt"
SOURCE_OUTPUTS_FILE = "source_outputs.npy"
DEBUG_FILE = "debug-int8.json"

FAULT_ENV = "EDGEFLEET_CONVERTER_FAULT"
"""Test hook: ``abort`` | ``hang`` | ``raise`` makes the worker fail that way before it imports
TensorFlow, so the tests can check how a crash, a hang or an exception at this process boundary
surfaces in the parent, in milliseconds instead of a real TensorFlow failure."""

DEBUG_WORST_LAYERS = 8
FOREIGN_KINDS = ("onnx", "sklearn", "torch")


def model_file(mode: str) -> str:
    return f"model-{mode}.tflite"


def mode_file(mode: str) -> str:
    return f"mode-{mode}.json"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m converter.worker JOB.json", file=sys.stderr)
        return 2
    job: dict[str, Any] = json.loads(Path(argv[0]).read_text())
    out_dir = Path(job["out_dir"])
    faulthandler.enable()  # a crash in TensorFlow prints the Python frame it happened in
    _inject_fault(os.environ.get(FAULT_ENV, ""))
    try:
        run(job, out_dir)
    except InputProblemError as exc:
        _write_json(out_dir / RESULT_FILE, {"ok": False, "kind": "input", "message": str(exc)})
        return 1
    except Exception as exc:  # a failure outside any one mode (loading, predicting)
        message = f"{type(exc).__name__}: {str(exc).strip()}"
        _write_json(out_dir / RESULT_FILE, {"ok": False, "kind": "conversion", "message": message[:2000]})
        return 1
    _write_json(out_dir / RESULT_FILE, {"ok": True})
    return 0


def run(job: dict[str, Any], out_dir: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.monotonic()
    import keras
    import tensorflow as tf

    calibration = np.load(job["calibration"])
    evaluation = np.load(job["evaluation"])
    if job["kind"] in FOREIGN_KINDS:
        from converter.worker_foreign import load_foreign

        loaded = load_foreign(job, tf, evaluation.astype(np.float32))
    else:
        loaded = load(job, keras, tf, calibration.shape[1:])
    for role, data in (("calibration", calibration), ("evaluation", evaluation)):
        expected = loaded.input_shape[1:]
        if len(expected) != data.ndim - 1 or any(
            e is not None and e != a for e, a in zip(expected, data.shape[1:], strict=False)
        ):
            shown = ", ".join("?" if e is None else str(e) for e in expected)
            raise InputProblemError(f"{role} x has shape {data.shape} but the model takes (N, {shown})")
    if not (out_dir / SOURCE_OUTPUTS_FILE).exists():
        np.save(out_dir / SOURCE_OUTPUTS_FILE, loaded.predict(evaluation))
    _write_json(
        out_dir / FACTS_FILE,
        {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "input_shape": loaded.input_shape,
            "output_shapes": loaded.output_shapes,
            "float32_weight_bytes": loaded.float32_weight_bytes,
            "recurrent": loaded.recurrent,
            "normalization": loaded.normalization,
            "changes": loaded.changes,
            "load_seconds": round(time.monotonic() - started, 3),
        },
    )
    samples = calibration.astype(np.float32)
    for mode_name in job["modes"]:
        mode = QuantizationMode(mode_name)
        (out_dir / CURRENT_FILE).write_text(mode.value)
        mode_started = time.monotonic()
        try:
            converter = loaded.converter()
            configure(converter, tf, mode, samples, job.get("io_type", "int8"))
            if mode is QuantizationMode.INT8 and job.get("float_layers"):
                tflite = _int8_with_float_layers(converter, tf, samples, job["float_layers"])
            else:
                tflite = converter.convert()
            ops = _ops(tf, tflite)
        except InputProblemError:
            raise
        except Exception as exc:
            result = {"ok": False, **_classify_failure(exc, loaded.recurrent)}
        else:
            (out_dir / model_file(mode.value)).write_bytes(tflite)
            result = {"ok": True, "ops": ops, "seconds": round(time.monotonic() - mode_started, 3)}
        _write_json(out_dir / mode_file(mode.value), result)
        if job.get("debug_int8") and mode is QuantizationMode.INT8 and result["ok"]:
            _write_json(out_dir / DEBUG_FILE, _debug_layers(loaded.converter(), tf, samples, job))
    (out_dir / CURRENT_FILE).unlink(missing_ok=True)


def configure(converter: Any, tf: Any, mode: QuantizationMode, samples: Any, io_type: str = "int8") -> None:
    """Set a TFLiteConverter up for one quantization mode. Never adds SELECT_TF_OPS."""
    if mode is QuantizationMode.NONE:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode is QuantizationMode.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    elif mode in (QuantizationMode.INT8, QuantizationMode.INT16X8):
        converter.representative_dataset = _representative(samples)
        if mode is QuantizationMode.INT8:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io_type in ("int8", "uint8"):
                converter.inference_input_type = getattr(tf, io_type)
                converter.inference_output_type = getattr(tf, io_type)
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
    # DYNAMIC: Optimize.DEFAULT without calibration data quantizes weights only.


def _representative(samples: Any) -> Callable[[], Iterator[list[Any]]]:
    def representative() -> Iterator[list[Any]]:
        for i in range(len(samples)):
            yield [samples[i : i + 1]]

    return representative


def _ops(tf: Any, tflite: bytes) -> list[str]:
    interpreter = tf.lite.Interpreter(model_content=tflite)
    return sorted({str(op["op_name"]) for op in interpreter._get_ops_details()})


_SELECT_OPS = re.compile(r"TF Select ops: ([^\n]+)")
_FLEX_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")


def _classify_failure(exc: Exception, recurrent: list[str]) -> dict[str, Any]:
    text = str(exc)
    ops: set[str] = set()
    for match in _SELECT_OPS.finditer(text):
        ops.update(op.strip() for op in match.group(1).split(",") if op.strip())
    ops.update(_FLEX_OP.findall(text))
    if ops:
        return {"kind": "select_ops", "ops": sorted(ops), "message": text[-2000:]}
    if "tensor list ops" in text.lower() and recurrent:
        return {"kind": "recurrent", "message": text[-2000:]}
    lines = [line for line in text.strip().splitlines() if "error:" in line] or text.strip().splitlines()
    first = lines[0].strip() if lines else "no message"
    return {"kind": "conversion", "message": f"{type(exc).__name__}: {first}"[:2000]}


def _int8_with_float_layers(converter: Any, tf: Any, samples: Any, layers: list[str]) -> bytes:
    """Full-integer model with the named layers' ops kept in float (TF's quantization debugger)."""
    nodes = _matching_nodes(converter, tf, layers)
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=_representative(samples[:100]), debug_options=options
    )
    model: bytes = debugger.get_nondebug_quantized_model()
    return model


def _matching_nodes(converter: Any, tf: Any, layers: list[str]) -> list[str]:
    quantized = converter.convert()
    interpreter = tf.lite.Interpreter(model_content=quantized)
    names = {detail["name"] for detail in interpreter.get_tensor_details()}

    def belongs(name: str, layer: str) -> bool:  # Keras traces "dense" as ".../dense_1/..."
        return re.search(rf"(^|/){re.escape(layer)}(_\d+)?/", name) is not None

    nodes = sorted(name for name in names if any(belongs(name, layer) for layer in layers))
    missing = [layer for layer in layers if not any(belongs(n, layer) for n in names)]
    if missing:
        raise InputProblemError(
            f"--float-layers {', '.join(missing)}: no such layer in the converted model "
            "(use the names the int8 per-layer report or model.summary() shows)"
        )
    return nodes


def _debug_layers(converter: Any, tf: Any, samples: Any, job: dict[str, Any]) -> dict[str, Any]:
    """TF's quantization debugger: the layers whose int8 outputs stray furthest from float."""
    configure(converter, tf, QuantizationMode.INT8, samples, "float")
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=_representative(samples[:100])
    )
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        try:
            scale = float(row["scale"])
            mse = float(row["mean_squared_error"])
        except (KeyError, ValueError):
            continue
        if scale <= 0:
            continue
        rows.append(
            {
                "op": row.get("op_name", ""),
                "tensor": row.get("tensor_name", ""),
                "rmse_over_scale": round(float(np.sqrt(mse)) / scale, 4),
                "mean_error": float(row.get("mean_error") or 0.0),
            }
        )
    rows.sort(key=lambda r: -float(r["rmse_over_scale"]))
    return {"layers": rows[:DEBUG_WORST_LAYERS]}


def _inject_fault(fault: str) -> None:
    if fault == "abort":
        os.abort()
    elif fault == "hang":
        signal.pause()
    elif fault == "raise":
        raise RuntimeError("injected fault")


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
