"""Running the converter's commands in the test process, and the inputs they take.

The CLI runs in this process (``converter.cli.main``); the conversion itself happens in a worker
subprocess, so TensorFlow is never imported here and tflite-runtime may be.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.cli import main

FACTORIES = Path(__file__).resolve().parents[1] / "converter" / "factories.py"
"""Keras model factories (``module:function`` sources) for the converter's input tests."""

TEST_EPOCHS = {"diabetes": "60", "sunspots": "60"}
"""Fewer epochs than the examples' own (the conversion is under test, not the training)."""


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Converted:
    run: CliRun
    bundle: Path
    report: dict[str, Any]


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> CliRun:
    """The converter's commands with the ``edgefleet`` error contract (one line, exit 2)."""
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return CliRun(code, captured.out, captured.err)


def cli_capture(argv: list[str]) -> CliRun:
    """Run the converter's CLI in this process, capturing by redirection (usable in any fixture,
    where capsys is not)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return CliRun(code, stdout.getvalue(), stderr.getvalue())


def convert_argv(model_dir: Path, key: Path, out: Path, mode: str, *extra: str) -> list[str]:
    """``convert`` for a ``converter.examples digits`` folder."""
    return [
        "convert", str(model_dir / "model.keras"),
        "--calibration", str(model_dir / "calibration.npz"),
        "--evaluation", str(model_dir / "evaluation.npz"),
        "--labels", str(model_dir / "labels.txt"),
        "--mode", mode, "--name", "digits", "--version", "1.0.0", "--task", "classification",
        "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip


def factory_argv(
    function: str, data: tuple[Path, Path], key: Path, out: Path, mode: str, *extra: str
) -> list[str]:
    """``convert`` for a ``FACTORIES`` model function with the data of ``write_sequences``."""
    calibration, evaluation = data
    return [
        "convert", f"{FACTORIES}:{function}",
        "--calibration", str(calibration), "--evaluation", str(evaluation),
        "--mode", mode, "--name", function.replace("_", "-"), "--version", "1.0.0", "--task", "forecast",
        "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip


def write_sequences(folder: Path, features: tuple[int, ...], samples: int = 120) -> tuple[Path, Path]:
    """Random calibration and evaluation .npz for a factory model (the values do not matter)."""
    rng = np.random.default_rng(0)
    calibration, evaluation = folder / "calibration.npz", folder / "evaluation.npz"
    np.savez(calibration, x=rng.random((samples, *features)).astype(np.float32))
    np.savez(
        evaluation,
        x=rng.random((40, *features)).astype(np.float32),
        y=rng.random((40, 1)).astype(np.float32),
    )
    return calibration, evaluation


def train_example(name: str, folder: Path) -> Path:
    """Train a worked example (``converter.examples``) in a subprocess, with ``TEST_EPOCHS``."""
    subprocess.run(
        [sys.executable, "-m", "converter.examples", name, str(folder), "--epochs", TEST_EPOCHS[name]],
        check=True,
        capture_output=True,
    )
    return folder
