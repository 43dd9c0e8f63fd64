"""Converter fixtures: each needed conversion runs once per module, through the real CLI.

Conversion happens in subprocesses (``converter.worker`` imports TensorFlow there), so this pytest
process never imports TensorFlow and may run tflite-runtime itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from converter.cli import main


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> CliRun:
    """The converter's commands with the ``edgefleet`` error contract (one line, exit 2)."""
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return CliRun(code, captured.out, captured.err)


def convert_argv(model_dir: Path, key: Path, out: Path, mode: str, *extra: str) -> list[str]:
    return [
        "convert", str(model_dir / "model.keras"),
        "--calibration", str(model_dir / "calibration.npz"),
        "--evaluation", str(model_dir / "evaluation.npz"),
        "--labels", str(model_dir / "labels.txt"),
        "--mode", mode, "--name", "digits", "--version", "1.0.0", "--task", "classification",
        "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip


@dataclass(frozen=True)
class Converted:
    run: CliRun
    bundle: Path
    report: dict[str, Any]


def _convert_once(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mode: str, *extra: str
) -> tuple[CliRun, Path, Path]:
    digits: Path = request.getfixturevalue("digits_model")
    private, _ = request.getfixturevalue("signing_keys")
    folder = tmp_path_factory.mktemp(f"convert-{mode}")
    out, report = folder / "digits.bundle", folder / "report.json"
    # Module-scoped fixtures cannot use capsys: capture by redirection instead.
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*convert_argv(digits, private, out, mode, *extra), "--report-json", str(report)])
    return CliRun(code, stdout.getvalue(), stderr.getvalue()), out, report


@pytest.fixture(scope="module")
def int8_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    run, out, report = _convert_once(request, tmp_path_factory, "int8")
    assert run.code == 0, run.stderr
    return Converted(run, out, json.loads(report.read_text()))


@pytest.fixture(scope="module")
def dynamic_refused(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    run, out, _ = _convert_once(request, tmp_path_factory, "dynamic")
    return Converted(run, out, {})


@pytest.fixture(scope="module")
def dynamic_litert(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    run, out, report = _convert_once(request, tmp_path_factory, "dynamic", "--runtime", "litert")
    assert run.code == 0, run.stderr
    return Converted(run, out, json.loads(report.read_text()))


_TRAIN_REGRESSION = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras, numpy as np
from sklearn.datasets import load_diabetes
keras.utils.set_random_seed(0)
x, y = load_diabetes(return_X_y=True)
x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
y = ((y - y.mean()) / y.std()).astype(np.float32)
layers = [keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
model = keras.Sequential(layers)
model.compile(optimizer="adam", loss="mse")
model.fit(x[:350], y[:350], epochs=20, verbose=0)
out = sys.argv[1]
model.save(os.path.join(out, "model.keras"))
np.savez(os.path.join(out, "calibration.npz"), x=x[:350])
np.savez(os.path.join(out, "evaluation.npz"), x=x[350:], y=y[350:])
"""


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Keras regressor on scikit-learn's diabetes data, trained in a subprocess."""
    folder = tmp_path_factory.mktemp("diabetes")
    subprocess.run([sys.executable, "-c", _TRAIN_REGRESSION, str(folder)], check=True, capture_output=True)
    return folder


FACTORIES = Path(__file__).with_name("factories.py")


def cli_capture(argv: list[str]) -> CliRun:
    """Run the converter's CLI in this process, capturing by redirection (usable in any fixture)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return CliRun(code, stdout.getvalue(), stderr.getvalue())


TEST_EPOCHS = {"diabetes": "60", "sunspots": "60"}
"""Fewer epochs than the examples' own (the conversion is under test, not the training)."""


def train_example(name: str, folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "converter.examples", name, str(folder), "--epochs", TEST_EPOCHS[name]],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture(scope="session")
def example_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """diabetes and sunspots trained as the examples train them (digits is the session's digits_model)."""
    return {
        name: train_example(name, tmp_path_factory.mktemp(f"example-{name}"))
        for name in ("diabetes", "sunspots")
    }


@pytest.fixture(scope="session")
def auto_converted(
    example_models: dict[str, Path],
    digits_model: Path,
    signing_keys: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Converted]:
    """Each worked example converted with ``--mode auto`` (every mode converted and measured)."""
    from converter.examples import convert_argv as example_argv

    folders = {"digits": digits_model, **example_models}
    converted = {}
    for name, folder in folders.items():
        out_dir = tmp_path_factory.mktemp(f"auto-{name}")
        out, report = out_dir / f"{name}.bundle", out_dir / "report.json"
        argv = example_argv(name, folder, signing_keys[0], out, "auto", "--report-json", str(report))
        run = cli_capture(argv)
        assert run.code == 0, run.stderr
        converted[name] = Converted(run, out, json.loads(report.read_text()))
    return converted


def write_sequences(folder: Path, features: tuple[int, ...], samples: int = 120) -> tuple[Path, Path]:
    """Random calibration and evaluation .npz for a factory model (the values do not matter)."""
    import numpy as np

    rng = np.random.default_rng(0)
    calibration, evaluation = folder / "calibration.npz", folder / "evaluation.npz"
    np.savez(calibration, x=rng.random((samples, *features)).astype(np.float32))
    np.savez(
        evaluation,
        x=rng.random((40, *features)).astype(np.float32),
        y=rng.random((40, 1)).astype(np.float32),
    )
    return calibration, evaluation


def factory_argv(
    function: str, data: tuple[Path, Path], key: Path, out: Path, mode: str, *extra: str
) -> list[str]:
    calibration, evaluation = data
    return [
        "convert", f"{FACTORIES}:{function}",
        "--calibration", str(calibration), "--evaluation", str(evaluation),
        "--mode", mode, "--name", function.replace("_", "-"), "--version", "1.0.0", "--task", "forecast",
        "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip
