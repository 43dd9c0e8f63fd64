"""The TensorFlow side of a conversion, run as ``python -m converter.worker JOB.json``.

This is the only module that imports TensorFlow, and it only runs in its own subprocess:
TensorFlow and tflite-runtime cannot share a process, and a TensorFlow crash or hang must end
this process, not the operator's command. One worker converts one or more modes of one model
(TensorFlow starts and the model loads once). It writes into the job's ``out_dir``:

- ``facts.json`` once the model is loaded (versions, shapes, recurrent layers, what was changed);
- ``source_outputs.npy``: the source model's first output on the evaluation set;
- ``current.txt``: the mode being converted now, so that the parent knows which one a crash hit;
- per mode, ``model-MODE.tflite`` and ``mode-MODE.json`` (``{"ok": true, "ops": [...]}`` or
  ``{"ok": false, "kind": "conversion"|"select_ops"|"recurrent", "message": ...}``);
- ``debug-int8.json`` when the job asks for the int8 per-layer report;
- ``result.json``: ``{"ok": true}``, or ``{"ok": false, "kind": "input", "message": ...}``.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
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

PREDICT_BATCH = 256
RECURRENT_CLASSES = ("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
DEBUG_WORST_LAYERS = 8


def model_file(mode: str) -> str:
    return f"model-{mode}.tflite"


def mode_file(mode: str) -> str:
    return f"mode-{mode}.json"


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
        run(job, out_dir)
    except _InputProblemError as exc:
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
    loaded = _load(job, keras, tf, calibration.shape[1:])
    for role, data in (("calibration", calibration), ("evaluation", evaluation)):
        expected = loaded.input_shape[1:]
        if len(expected) != data.ndim - 1 or any(
            e is not None and e != a for e, a in zip(expected, data.shape[1:], strict=False)
        ):
            shown = ", ".join("?" if e is None else str(e) for e in expected)
            raise _InputProblemError(f"{role} x has shape {data.shape} but the model takes (N, {shown})")
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
        except _InputProblemError:
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


class _Loaded:
    """The source model, whichever kind it came as, behind one small interface."""

    def __init__(
        self,
        *,
        converter: Callable[[], Any],
        predict: Callable[[Any], Any],
        input_shape: list[int | None],
        output_shapes: list[list[int | None]],
        float32_weight_bytes: int | None,
        recurrent: list[str],
        changes: list[str],
    ) -> None:
        self.converter = converter
        self._predict = predict
        self.input_shape = input_shape
        self.output_shapes = output_shapes
        self.float32_weight_bytes = float32_weight_bytes
        self.recurrent = recurrent
        self.changes = changes

    def predict(self, x: Any) -> Any:
        return np.asarray(self._predict(x), dtype=np.float32)


def _load(job: dict[str, Any], keras: Any, tf: Any, data_shape: tuple[int, ...]) -> _Loaded:
    kind = job["kind"]
    if kind == "saved_model":
        return _load_saved_model(job["model"], tf)
    if kind == "factory":
        model = _call_factory(job["model"], keras)
    else:
        try:
            model = keras.models.load_model(job["model"], compile=False)
        except Exception as exc:
            raise _InputProblemError(f"{job['model']} cannot be loaded as a Keras model: {exc}") from exc
    if not isinstance(model, keras.Model):
        raise _InputProblemError(f"{job['model']} did not give a Keras model but {type(model).__name__}")
    if len(model.inputs) != 1:
        raise _InputProblemError(
            f"the model has {len(model.inputs)} inputs; the converter supports one input for now"
        )
    return _prepare_keras(model, keras, tf, job.get("rnn", "unroll"), data_shape)


def _call_factory(spec: str, keras: Any) -> Any:
    target, _, function = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"cannot import {target}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        factory = getattr(module, function)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise _InputProblemError(f"the model factory {spec} cannot be imported: {exc}") from exc
    try:
        return factory()
    except Exception as exc:
        raise _InputProblemError(f"the model factory {spec} raised {type(exc).__name__}: {exc}") from exc


def _prepare_keras(model: Any, keras: Any, tf: Any, rnn: str, data_shape: tuple[int, ...]) -> _Loaded:
    changes: list[str] = []
    input_shape = [None if d is None else int(d) for d in model.inputs[0].shape]
    recurrent = [layer.__class__.__name__ for layer in _walk(model) if _is_recurrent(layer)]
    dynamic = [i for i, d in enumerate(input_shape[1:], start=1) if d is None]
    if dynamic and len(data_shape) != len(input_shape) - 1:
        raise _InputProblemError(
            f"the model's input {input_shape} has dynamic dimensions other than the batch and the "
            f"calibration data's sample shape {data_shape} cannot fix them"
        )
    to_unroll = rnn == "unroll" and any(name in RECURRENT_CLASSES[:3] for name in recurrent)
    if dynamic or to_unroll:
        fixed = [None, *data_shape] if dynamic else input_shape
        rebuilt = _rebuild(model, keras, fixed, unroll=to_unroll)
        if rebuilt is None:
            what = "fix its dynamic input dimensions" if dynamic else "unroll its recurrent layers"
            raise _InputProblemError(
                f"cannot {what} in a model that has no Keras config (subclassed model); "
                + (
                    "give the Input a fixed shape"
                    if dynamic
                    else "build the layers with unroll=True, or pass --rnn keep"
                )
            )
        model = rebuilt
        if dynamic:
            changes.append(
                f"input dimensions {dynamic} fixed to {[data_shape[i - 1] for i in dynamic]} "
                "from the calibration data"
            )
        if to_unroll:
            changes.append(f"recurrent layers unrolled for {fixed[1]} time steps (--rnn unroll)")
        input_shape = [None if d is None else int(d) for d in model.inputs[0].shape]
    output_shapes = [[None if d is None else int(d) for d in output.shape] for output in model.outputs]

    def predict(x: Any) -> Any:
        out = model.predict(x, batch_size=PREDICT_BATCH, verbose=0)
        if isinstance(out, (list, tuple)):
            return out[0]
        if isinstance(out, dict):
            return next(iter(out.values()))
        return out

    return _Loaded(
        converter=lambda: tf.lite.TFLiteConverter.from_keras_model(model),
        predict=predict,
        input_shape=input_shape,
        output_shapes=output_shapes,
        float32_weight_bytes=int(sum(int(np.prod(w.shape)) for w in model.weights) * 4),
        recurrent=recurrent,
        changes=changes,
    )


def _walk(layer: Any) -> Iterator[Any]:
    for child in getattr(layer, "layers", []) or []:
        yield child
        yield from _walk(child)
    for attr in ("layer", "forward_layer", "backward_layer"):  # Bidirectional, TimeDistributed
        inner = getattr(layer, attr, None)
        if inner is not None and inner is not layer and hasattr(inner, "get_config"):
            yield inner
            yield from _walk(inner)


def _is_recurrent(layer: Any) -> bool:
    return layer.__class__.__name__ in RECURRENT_CLASSES


def _rebuild(model: Any, keras: Any, input_shape: list[int | None], unroll: bool) -> Any:
    """The same model from its config with a fixed input shape and/or unrolled RNNs, same weights."""
    try:
        config = model.get_config()
    except NotImplementedError:
        return None
    if not isinstance(config, dict) or "layers" not in config:
        return None

    def patch(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") in ("LSTM", "GRU", "SimpleRNN") and unroll:
                node.setdefault("config", {})["unroll"] = True
            if node.get("class_name") == "InputLayer":
                layer_config = node.setdefault("config", {})
                layer_config.pop("batch_input_shape", None)
                layer_config["batch_shape"] = list(input_shape)
            for value in node.values():
                patch(value)
        elif isinstance(node, list):
            for value in node:
                patch(value)

    patch(config)
    cls = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
    try:
        rebuilt = cls.from_config(config)
        rebuilt.set_weights(model.get_weights())
    except Exception as exc:
        raise _InputProblemError(
            f"cannot rebuild the model with a fixed shape / unrolled layers: {exc}"
        ) from exc
    return rebuilt


def _load_saved_model(path: str, tf: Any) -> _Loaded:
    try:
        loaded = tf.saved_model.load(path)
        signature = loaded.signatures["serving_default"]
    except Exception as exc:
        raise _InputProblemError(
            f"{path} cannot be loaded as a SavedModel with a serving_default: {exc}"
        ) from exc
    specs = signature.structured_input_signature[1]
    if len(specs) != 1:
        raise _InputProblemError(
            f"the SavedModel's serving_default takes {len(specs)} inputs; one is supported"
        )
    input_name, input_spec = next(iter(specs.items()))
    input_shape = [None if d is None else int(d) for d in input_spec.shape]
    if any(d is None for d in input_shape[1:]):
        raise _InputProblemError(
            f"the SavedModel's input {input_name} has shape {input_shape}: dimensions other than the batch "
            "must be fixed for TFLite; re-export it with a fixed input_signature"
        )
    output_keys = sorted(signature.structured_outputs)
    output_shapes = [
        [None if d is None else int(d) for d in signature.structured_outputs[k].shape] for k in output_keys
    ]

    def predict(x: Any) -> Any:
        parts = []
        for start in range(0, len(x), PREDICT_BATCH):
            out = signature(**{input_name: tf.constant(x[start : start + PREDICT_BATCH])})
            parts.append(out[output_keys[0]].numpy())
        return np.concatenate(parts)

    weights = getattr(loaded, "variables", [])
    return _Loaded(
        converter=lambda: tf.lite.TFLiteConverter.from_saved_model(path),
        predict=predict,
        input_shape=input_shape,
        output_shapes=output_shapes,
        float32_weight_bytes=int(sum(int(np.prod(v.shape)) for v in weights) * 4) or None,
        recurrent=[],
        changes=[],
    )


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
        raise _InputProblemError(
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
