"""Small real models trained on data that ships inside scikit-learn, for the demo and the tests.

Run as ``python -m converter.examples digits OUT_DIR [--seed N]``. It writes ``model.keras``,
``calibration.npz`` (``x``), ``evaluation.npz`` (``x``, ``y``) and ``labels.txt``. Training
imports TensorFlow, so callers that also run a TFLite runtime must run this in a subprocess:
TensorFlow and tflite-runtime cannot share a process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def train_digits(out_dir: Path, seed: int = 0, epochs: int = 25, filters: int = 8, dense: int = 256) -> float:
    """Train a small CNN on scikit-learn's 8x8 digits; return its held-out accuracy.

    The dense layer is wide enough (~37k weights) that the weights, not the flatbuffer's fixed
    overhead (~8 KB for an int8 model), dominate the model size, so quantization ratios are
    representative of real models.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(seed)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="pixels"),
            keras.layers.Conv2D(filters, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(dense, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_eval, y_eval, verbose=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    np.savez(out_dir / "calibration.npz", x=x_train[:300])
    np.savez(out_dir / "evaluation.npz", x=x_eval, y=y_eval)
    (out_dir / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    return float(accuracy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.examples", description=__doc__)
    parser.add_argument("example", choices=["digits"])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--dense", type=int, default=256)
    args = parser.parse_args(argv)
    accuracy = train_digits(
        args.out_dir, seed=args.seed, epochs=args.epochs, filters=args.filters, dense=args.dense
    )
    print(f"trained {args.example} into {args.out_dir}: held-out accuracy {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
