"""Worked examples from other frameworks, trained on data that ships inside scikit-learn.

Run as ``python -m converter.examples_foreign EXAMPLE OUT_DIR`` or through the scripts in
examples/; each writes the model (``model.joblib`` or ``model.onnx``), ``calibration.npz``
(``x``) and ``evaluation.npz`` (``x``, ``y``), plus ``labels.txt`` for classifiers:

- ``cancer-gb``: a gradient-boosting classifier on the breast-cancer data (30 raw features);
- ``diabetes-pipeline``: a Pipeline of StandardScaler and MLPRegressor on the diabetes data;
- ``cancer-onnx``: the cancer-gb classifier exported to ONNX with skl2onnx, as another tool
  would hand it over.

No TensorFlow here: scikit-learn trains in a second or two.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

EXAMPLES = ("cancer-gb", "diabetes-pipeline", "cancer-onnx")
VARIANTS = ("cancer-gb-scaled",)
"""Measured by benchmarks.converter: the cancer classifier behind a StandardScaler (which becomes
the recorded preprocessing), to show what int8 does to trees on scaled inputs."""
TASKS = {
    "cancer-gb": "classification", "diabetes-pipeline": "regression", "cancer-onnx": "classification",
    "cancer-gb-scaled": "classification",
}  # fmt: skip
MODEL_FILES = {
    "cancer-gb": "model.joblib", "diabetes-pipeline": "model.joblib", "cancer-onnx": "model.onnx",
    "cancer-gb-scaled": "model.joblib",
}  # fmt: skip


def train(example: str, out_dir: Path, seed: int = 0) -> float:
    """Train ``example`` into ``out_dir``; return its held-out accuracy or MAE."""
    import joblib
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out_dir.mkdir(parents=True, exist_ok=True)
    if example == "diabetes-pipeline":
        x, y = load_diabetes(return_X_y=True)
        model = make_pipeline(
            StandardScaler(), MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=3000, random_state=seed)
        )
    else:
        x, y = load_breast_cancer(return_X_y=True)
        model = GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=seed)
        if example == "cancer-gb-scaled":
            model = make_pipeline(StandardScaler(), model)
        (out_dir / "labels.txt").write_text("malignant\nbenign\n")
    x = x.astype(np.float32)
    x_train, x_eval, y_train, y_eval = train_test_split(x, y, test_size=0.25, random_state=seed)
    with warnings.catch_warnings():  # the MLP stops at max_iter, converged or not: same model each run
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    np.savez(out_dir / "calibration.npz", x=x_train)
    regression = TASKS[example] == "regression"
    np.savez(out_dir / "evaluation.npz", x=x_eval, y=y_eval.astype(np.float32 if regression else np.int64))
    if example == "cancer-onnx":
        from skl2onnx import to_onnx

        exported = to_onnx(model, x_train[:1], options={type(model): {"zipmap": False}})
        (out_dir / "model.onnx").write_bytes(exported.SerializeToString())
    else:
        joblib.dump(model, out_dir / "model.joblib")
    predicted = model.predict(x_eval)
    if example == "diabetes-pipeline":
        return float(np.mean(np.abs(predicted - y_eval)))
    return float(np.mean(predicted == y_eval))


def convert_argv(example: str, folder: Path, key: Path, out: Path, mode: str, *extra: str) -> list[str]:
    """``convert`` arguments for a trained example folder (as ``python -m converter`` takes them)."""
    argv = [
        "convert", str(folder / MODEL_FILES[example]),
        "--calibration", str(folder / "calibration.npz"),
        "--evaluation", str(folder / "evaluation.npz"),
        "--mode", mode, "--name", example, "--version", "1.0.0", "--task", TASKS[example],
        "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip
    if (folder / "labels.txt").is_file():
        argv += ["--labels", str(folder / "labels.txt")]
    return argv


def worked_example(example: str, argv: list[str] | None = None) -> int:
    """Train an example, then convert it: the scripts in examples/."""
    from converter.examples import convert_trained

    def train_into(folder: Path) -> None:
        print(f"training {example} into {folder}: {train(example, folder):.3f}", file=sys.stderr)

    return convert_trained(example, argv, MODEL_FILES[example], train_into, convert_argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.examples_foreign", description=__doc__)
    parser.add_argument("example", choices=EXAMPLES + VARIANTS)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    figure = train(args.example, args.out_dir, seed=args.seed)
    what = "MAE" if TASKS[args.example] == "regression" else "accuracy"
    print(f"trained {args.example} into {args.out_dir}: held-out {what} {figure:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
