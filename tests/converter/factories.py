"""Model factories (``file.py:function``) for the converter's failure and input tests.

Imported only by the conversion worker (which has TensorFlow); Keras is imported inside each
function so that nothing here runs in the pytest process.
"""

from __future__ import annotations

from typing import Any


def lstm_fixed_batch() -> Any:
    """A Keras 3 LSTM with batch size 1: converts to a WHILE loop, and calibrating it segfaults."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((12, 1), batch_size=1), keras.layers.LSTM(8, name="lstm"), keras.layers.Dense(1)]
    )


def select_ops_model() -> Any:
    """A layer whose op (MatrixDeterminant) exists only as a TensorFlow op, not a TFLite builtin."""
    import keras
    import tensorflow as tf

    class Determinant(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return tf.reshape(tf.linalg.det(tf.reshape(x, (-1, 2, 2))), (-1, 1))

    return keras.Sequential([keras.Input((4,)), Determinant()])


def dynamic_length_model() -> Any:
    """A Conv1D regressor whose sequence length is not fixed (Input((None, 1)))."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((None, 1)),
            keras.layers.Conv1D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )


def not_a_model() -> Any:
    return {"weights": [1, 2, 3]}


def gru_forecaster() -> Any:
    """A GRU forecaster exported with batch size 1, as recurrent models often are: converted on the
    RNN unroll path (the default ``--rnn unroll``) into a fixed-batch model."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((12, 1), batch_size=1), keras.layers.GRU(8, name="gru"), keras.layers.Dense(1)]
    )


def normalized_regressor() -> Any:
    """A regressor that rescales its own inputs (a Keras Rescaling layer): preprocessing in_model."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Rescaling(0.5, offset=-1.0), keras.layers.Dense(1)]
    )
