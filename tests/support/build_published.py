"""Build TFLite models shaped like published ones, in a process that may import TensorFlow.

    python -m tests.support.build_published OUT_DIR

Writes ``<name>.tflite`` for each model in ``MODELS`` (untrained, seeded weights: the tests
compare the agent with the runtime, not with labels) and ``calibration.npz`` data where a
model is quantized. Run by ``tests.support.published_models`` in a subprocess: TensorFlow and
tflite-runtime cannot share a process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("detector", "pose", "two_inputs", "gru_forecaster", "custom_op", "image256", "variable_length")


def _detector(keras: Any) -> Any:
    """SSD-like: batch fixed at 1, int8, two outputs (boxes [1, 10, 4], scores [1, 10])."""
    image = keras.Input((32, 32, 3), batch_size=1, name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(image)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    boxes = keras.layers.Reshape((10, 4), name="boxes")(keras.layers.Dense(40, activation="sigmoid")(x))
    scores = keras.layers.Dense(10, activation="sigmoid", name="scores")(x)
    return keras.Model(image, [boxes, scores])


def _pose(keras: Any) -> Any:
    """PoseNet/segmenter-like: dynamic batch, float, five outputs, one a 2-D mask per instance."""
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    mask = keras.layers.Reshape((32, 32), name="mask")(keras.layers.Conv2D(1, 1, activation="sigmoid")(x))
    y = keras.layers.MaxPooling2D(4)(x)
    heatmaps = keras.layers.Conv2D(5, 1, activation="sigmoid", name="heatmaps")(y)
    offsets = keras.layers.Conv2D(10, 1, name="offsets")(y)
    pooled = keras.layers.GlobalAveragePooling2D()(y)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(pooled)
    keypoints = keras.layers.Dense(17, name="keypoints")(pooled)
    return keras.Model(image, [heatmaps, offsets, mask, score, keypoints])


def _two_inputs(keras: Any) -> Any:
    """An image and a feature vector in, class probabilities out; dynamic batch, float."""
    image = keras.Input((16, 16, 3), name="image")
    vector = keras.Input((8,), name="vector")
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, strides=2, activation="relu")(image))
    joined = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(vector)])
    probabilities = keras.layers.Dense(4, activation="softmax", name="probabilities")(joined)
    return keras.Model([image, vector], probabilities)


def _gru_forecaster(keras: Any) -> Any:
    """A GRU over 12 steps of 3 features, batch fixed at 1, forecasting 6 steps."""
    series = keras.Input((12, 3), batch_size=1, name="series")
    x = keras.layers.GRU(16)(series)
    return keras.Model(series, keras.layers.Dense(6, name="forecast")(x))


def _image256(keras: Any) -> Any:
    """A 256x256x3 float image classifier (the benchmark's model), ~3.7 MB of float32 weights
    like a small published one; dynamic batch."""
    image = keras.Input((256, 256, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(image)
    x = keras.layers.Conv2D(16, 3, strides=4, activation="relu")(x)
    x = keras.layers.Dense(256, activation="relu")(keras.layers.Flatten()(x))
    return keras.Model(image, keras.layers.Dense(10, activation="softmax", name="probabilities")(x))


def _convert_keras(tf: Any, model: Any, calibration: Any = None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:

        def representative() -> Any:
            for row in calibration:
                yield [row[np.newaxis]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    data: bytes = converter.convert()
    return data


def _custom_op(tf: Any) -> bytes:
    """A model whose one op TFLite has no kernel for, kept as a custom op (as exported models
    with vendor ops are): a runtime must refuse it by name."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])  # type: ignore[untyped-decorator]
    def forward(x: Any) -> Any:
        return {"y": tf.math.bessel_i1e(x) * 2.0}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], forward)
    converter.allow_custom_ops = True
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    data: bytes = converter.convert()
    return data


def _variable_length(tf: Any) -> bytes:
    """A sequence model whose length is declared dynamic but must be a multiple of 8 (it folds
    the sequence into rows of 8): any other length passes the shape checks and fails in the
    runtime, a real inference failure for the tests."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="tokens")])  # type: ignore[untyped-decorator]
    def forward(x: Any) -> Any:
        rows = tf.reshape(x, [tf.shape(x)[0], -1, 8])
        return {"pooled": tf.reduce_mean(rows, axis=1) * 2.0}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], forward)
    data: bytes = converter.convert()
    return data


def main(out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 1, (32, 32, 32, 3)).astype(np.float32)
    built = {
        "detector": _convert_keras(tf, _detector(keras), calibration),
        "pose": _convert_keras(tf, _pose(keras)),
        "two_inputs": _convert_keras(tf, _two_inputs(keras)),
        "gru_forecaster": _convert_keras(tf, _gru_forecaster(keras)),
        "custom_op": _custom_op(tf),
        "image256": _convert_keras(tf, _image256(keras)),
        "variable_length": _variable_length(tf),
    }
    for name, data in built.items():
        (out / f"{name}.tflite").write_bytes(data)
    np.savez(out / "calibration.npz", x=calibration)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
