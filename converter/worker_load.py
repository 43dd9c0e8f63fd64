"""The worker's first step: the source model loaded, whichever kind it came as, behind one small
interface (``Loaded``), with dynamic input dimensions fixed and recurrent layers unrolled when
asked. Runs only inside ``converter.worker`` (TensorFlow and Keras are passed in, never imported
here), so importing this module stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

PREDICT_BATCH = 256
NORMALIZATION_CLASSES = ("Normalization", "Rescaling")
RECURRENT_CLASSES = ("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


class InputProblemError(Exception):
    """The model or data cannot be used (reported as an input error, not a conversion failure)."""


class Loaded:
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
        normalization: list[str] | None = None,
    ) -> None:
        self.converter = converter
        self._predict = predict
        self.input_shape = input_shape
        self.output_shapes = output_shapes
        self.float32_weight_bytes = float32_weight_bytes
        self.recurrent = recurrent
        self.normalization = normalization or []
        """Keras layers that normalise the inputs first thing inside the model (Normalization,
        Rescaling)."""
        self.changes = changes

    def predict(self, x: Any) -> Any:
        return np.asarray(self._predict(x), dtype=np.float32)

    def replace_reference(self, predict: Callable[[Any], Any]) -> None:
        """Validate against ``predict`` (the source framework itself) instead of the TF model."""
        self._predict = predict


def load(job: dict[str, Any], keras: Any, tf: Any, data_shape: tuple[int, ...]) -> Loaded:
    kind = job["kind"]
    if kind == "saved_model":
        return load_saved_model(job["model"], tf)
    if kind == "factory":
        model = call_factory(job["model"])
    else:
        try:
            model = keras.models.load_model(job["model"], compile=False)
        except Exception as exc:
            raise InputProblemError(f"{job['model']} cannot be loaded as a Keras model: {exc}") from exc
    if not isinstance(model, keras.Model):
        raise InputProblemError(f"{job['model']} did not give a Keras model but {type(model).__name__}")
    if len(model.inputs) != 1:
        raise InputProblemError(
            f"the model has {len(model.inputs)} inputs; the converter supports one input for now"
        )
    return _prepare_keras(model, keras, tf, job.get("rnn", "unroll"), data_shape)


def call_factory(spec: str) -> Any:
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
        hint = ""
        if isinstance(exc, ImportError) and exc.name == "torch":
            from converter.extras import install_command

            hint = (
                "; a PyTorch factory is given as torch:MODULE:FUNCTION and needs the converter-torch "
                f"extra: {install_command('converter-torch')}"
            )
        raise InputProblemError(f"the model factory {spec} cannot be imported: {exc}{hint}") from exc
    try:
        return factory()
    except Exception as exc:
        raise InputProblemError(f"the model factory {spec} raised {type(exc).__name__}: {exc}") from exc


def _prepare_keras(model: Any, keras: Any, tf: Any, rnn: str, data_shape: tuple[int, ...]) -> Loaded:
    changes: list[str] = []
    input_shape = [None if d is None else int(d) for d in model.inputs[0].shape]
    recurrent = [layer.__class__.__name__ for layer in _walk(model) if _is_recurrent(layer)]
    dynamic = [i for i, d in enumerate(input_shape[1:], start=1) if d is None]
    if dynamic and len(data_shape) != len(input_shape) - 1:
        raise InputProblemError(
            f"the model's input {input_shape} has dynamic dimensions other than the batch and the "
            f"calibration data's sample shape {data_shape} cannot fix them"
        )
    to_unroll = rnn == "unroll" and any(name in RECURRENT_CLASSES[:3] for name in recurrent)
    if dynamic or to_unroll:
        fixed = [None, *data_shape] if dynamic else input_shape
        rebuilt = _rebuild(model, keras, fixed, unroll=to_unroll)
        if rebuilt is None:
            what = "fix its dynamic input dimensions" if dynamic else "unroll its recurrent layers"
            raise InputProblemError(
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

    return Loaded(
        converter=lambda: tf.lite.TFLiteConverter.from_keras_model(model),
        predict=predict,
        input_shape=input_shape,
        output_shapes=output_shapes,
        float32_weight_bytes=int(sum(int(np.prod(w.shape)) for w in model.weights) * 4),
        recurrent=recurrent,
        changes=changes,
        normalization=_input_normalization(model),
    )


def _input_normalization(model: Any) -> list[str]:
    """The Normalization/Rescaling layers the inputs go through first (a Rescaling at the output,
    putting predictions back into the target's units, is not input preprocessing)."""
    leading = []
    for layer in getattr(model, "layers", []) or []:
        name = layer.__class__.__name__
        if name == "InputLayer":
            continue
        if name not in NORMALIZATION_CLASSES:
            break
        leading.append(name)
    return leading


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
        raise InputProblemError(
            f"cannot rebuild the model with a fixed shape / unrolled layers: {exc}"
        ) from exc
    return rebuilt


def load_saved_model(path: str, tf: Any) -> Loaded:
    try:
        loaded = tf.saved_model.load(path)
        signature = loaded.signatures["serving_default"]
    except Exception as exc:
        raise InputProblemError(
            f"{path} cannot be loaded as a SavedModel with a serving_default: {exc}"
        ) from exc
    specs = signature.structured_input_signature[1]
    if len(specs) != 1:
        raise InputProblemError(
            f"the SavedModel's serving_default takes {len(specs)} inputs; one is supported"
        )
    input_name, input_spec = next(iter(specs.items()))
    input_shape = [None if d is None else int(d) for d in input_spec.shape]
    if any(d is None for d in input_shape[1:]):
        raise InputProblemError(
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
    return Loaded(
        converter=lambda: tf.lite.TFLiteConverter.from_saved_model(path),
        predict=predict,
        input_shape=input_shape,
        output_shapes=output_shapes,
        float32_weight_bytes=int(sum(int(np.prod(v.shape)) for v in weights) * 4) or None,
        recurrent=[],
        changes=[],
    )
