"""Small real models trained on data that ships inside a package, for the demo, tests and examples.

Run as ``python -m converter.examples digits|diabetes|sunspots OUT_DIR [--seed N]``: digits (a
CNN on scikit-learn's 8x8 digits, classification), diabetes (an MLP on scikit-learn's diabetes
data, regression), sunspots (an LSTM forecaster on statsmodels' yearly sunspot numbers). Each
writes ``model.keras``, ``calibration.npz`` (``x``), ``evaluation.npz`` (``x``, ``y``), and digits
also ``labels.txt``. Training
imports TensorFlow, so callers that also run a TFLite runtime must run this in a subprocess:
TensorFlow and tflite-runtime cannot share a process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt


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


def train_diabetes(out_dir: Path, seed: int = 0, epochs: int = 150, width: int = 256) -> float:
    """Train an MLP on scikit-learn's diabetes data; return its held-out MAE (disease progression units).

    The model is trained on standardized features; a final ``Rescaling`` layer puts the output
    back into the target's own units, so the MAE in the report is the one a clinician would read.
    The data files hold the features as they come (what a device is sent) and
    ``preprocessing.json`` the standardization, which the converter records and applies.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(seed)
    x, y = load_diabetes(return_X_y=True)
    raw_train, raw_eval, y_train, y_eval = train_test_split(
        x.astype(np.float32), y, test_size=0.2, random_state=seed
    )
    # float32 statistics, applied the way the converter and the agent apply them.
    mean, scale = raw_train.mean(axis=0), np.float32(1.0) / raw_train.std(axis=0)
    x_train, x_eval = (raw_train - mean) * scale, (raw_eval - mean) * scale
    y_mean, y_std = float(y_train.mean()), float(y_train.std())
    model = keras.Sequential(
        [
            keras.Input((10,), name="features"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(1),
            keras.layers.Rescaling(scale=y_std, offset=y_mean, name="progression"),
        ],
        name="diabetes",
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mae")
    model.fit(x_train, y_train.astype(np.float32), epochs=epochs, batch_size=32, verbose=0)
    predicted = model.predict(x_eval, verbose=0).reshape(-1)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    np.savez(out_dir / "calibration.npz", x=raw_train)
    np.savez(out_dir / "evaluation.npz", x=raw_eval, y=y_eval.astype(np.float32).reshape(-1, 1))
    preprocessing = {
        "method": "standardize",
        "offset": [float(v) for v in mean],
        "scale": [float(v) for v in scale],
        "description": "standardized with the training split's mean and std",
    }
    (out_dir / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2) + "\n")
    return float(np.mean(np.abs(predicted - y_eval)))


def sunspot_windows(window: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """statsmodels' yearly sunspot numbers (1700-2008) as (window -> next year) pairs, in order."""
    import statsmodels.api as sm  # type: ignore[import-untyped]

    series = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float32)
    x = np.stack([series[i : i + window] for i in range(len(series) - window)])[..., np.newaxis]
    y = series[window:].reshape(-1, 1)
    return x.astype(np.float32), y.astype(np.float32)


def train_sunspots(
    out_dir: Path, *, seed: int = 0, epochs: int = 120, window: int = 12, units: int = 64, cell: str = "lstm"
) -> float:
    """Train an LSTM (or GRU) forecaster of next year's sunspot number; return its held-out MAE.

    The split is chronological: the last 20 % of the years are the evaluation set. The model takes
    raw sunspot numbers and scales them inside (``Rescaling``), so the MAE is in sunspot numbers.

    Calibration only sets the int8 ranges, and the evaluation years hold the highest peak of the
    record (1957, 190) while the training years reach 154: ``calibration.npz`` therefore holds
    every input window of the history (the inputs a device will see; no targets), and
    ``calibration-train.npz`` the training windows only, for comparison (the converter warns that
    those clip the later inputs, and int8 then loses several % of MAE).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(seed)
    x, y = sunspot_windows(window)
    split = int(len(x) * 0.8)
    x_train, y_train, x_eval, y_eval = x[:split], y[:split], x[split:], y[split:]
    scale = float(x_train.max())
    recurrent = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
    model = keras.Sequential(
        [
            keras.Input((window, 1), name="years"),
            keras.layers.Rescaling(1.0 / scale),
            recurrent(units, name=cell),
            keras.layers.Dense(1),
            keras.layers.Rescaling(scale, name="sunspots"),
        ],
        name="sunspots",
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mae")
    model.fit(x_train, y_train, epochs=epochs, batch_size=16, verbose=0)
    predicted = model.predict(x_eval, verbose=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    np.savez(out_dir / "calibration.npz", x=x)
    np.savez(out_dir / "calibration-train.npz", x=x_train)
    np.savez(out_dir / "evaluation.npz", x=x_eval, y=y_eval)
    return float(np.mean(np.abs(predicted - y_eval)))


EXAMPLES = ("digits", "diabetes", "sunspots")
TASKS = {"digits": "classification", "diabetes": "regression", "sunspots": "forecast"}
PREPROCESSING_FILE = "preprocessing.json"
"""What a trained example was preprocessed with (when not inside the model), for --preprocessing-file."""


def convert_argv(example: str, folder: Path, key: Path, out: Path, mode: str, *extra: str) -> list[str]:
    """``convert`` arguments for a trained example folder (as ``python -m converter`` takes them)."""
    argv = [
        "convert", str(folder / "model.keras"),
        "--calibration", str(folder / "calibration.npz"),
        "--evaluation", str(folder / "evaluation.npz"),
        "--mode", mode, "--name", example, "--version", "1.0.0", "--task", TASKS[example],
        "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip
    if (folder / "labels.txt").is_file():
        argv += ["--labels", str(folder / "labels.txt")]
    if (folder / PREPROCESSING_FILE).is_file():
        argv += ["--preprocessing-file", str(folder / PREPROCESSING_FILE)]
    return argv


ArgvMaker = Callable[..., list[str]]
"""``(example, folder, key, out, mode, *extra)`` → the ``convert`` arguments (``convert_argv``)."""


def convert_trained(
    example: str,
    argv: list[str] | None,
    model_file: str,
    train_into: Callable[[Path], None],
    make_argv: ArgvMaker,
) -> int:
    """The scripts in examples/: train into OUT_DIR/model unless ``model_file`` is there already,
    make an operator key unless one is given, then convert with the report beside the bundle."""
    parser = argparse.ArgumentParser(description=f"Train the {example} example and convert it.")
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path(f"{example}-example"))
    parser.add_argument("--mode", default="auto", help="quantization mode (default auto: every mode)")
    parser.add_argument("--key", type=Path, help="operator key (default: a new one in OUT_DIR/keys)")
    parser.add_argument("--max-drop", action="append", default=[], metavar="METRIC=AMOUNT")
    args = parser.parse_args(argv)
    folder = args.out_dir / "model"
    if not (folder / model_file).is_file():
        train_into(folder)
    from converter.cli import main as converter_main

    key = args.key
    if key is None:
        key = args.out_dir / "keys" / "operator.key"
        if not key.is_file():
            converter_main(["keys", "generate", "--out", str(key.parent)])
    extra = [f"--max-drop={budget}" for budget in args.max_drop]
    out = args.out_dir / f"{example}-{args.mode}.bundle"
    report = args.out_dir / f"{example}-{args.mode}.json"
    return converter_main(
        make_argv(example, folder, key, out, args.mode, "--force", "--report-json", str(report), *extra)
    )


def worked_example(example: str, argv: list[str] | None = None) -> int:
    """Train an example (in a TensorFlow subprocess), then convert it here: the scripts in examples/."""
    import subprocess

    def train_into(folder: Path) -> None:
        print(f"training {example} into {folder} (TensorFlow runs in a subprocess)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "converter.examples", example, str(folder)], check=True)

    return convert_trained(example, argv, "model.keras", train_into, convert_argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.examples", description=__doc__)
    parser.add_argument("example", choices=EXAMPLES)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="training epochs (default: the example's own)")
    parser.add_argument("--filters", type=int, default=8, help="digits: convolution filters")
    parser.add_argument("--dense", type=int, default=256, help="digits: dense units")
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm", help="sunspots: recurrent cell")
    args = parser.parse_args(argv)
    epochs = {"epochs": args.epochs} if args.epochs else {}
    if args.example == "digits":
        accuracy = train_digits(
            args.out_dir, seed=args.seed, filters=args.filters, dense=args.dense, **epochs
        )
        print(f"trained digits into {args.out_dir}: held-out accuracy {accuracy:.3f}")
    elif args.example == "diabetes":
        mae = train_diabetes(args.out_dir, seed=args.seed, **epochs)
        print(f"trained diabetes into {args.out_dir}: held-out MAE {mae:.2f}")
    else:
        mae = train_sunspots(args.out_dir, seed=args.seed, cell=args.cell, **epochs)
        print(f"trained sunspots ({args.cell}) into {args.out_dir}: held-out MAE {mae:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
