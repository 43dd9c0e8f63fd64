"""The scikit-learn and ONNX worked examples (``converter.examples_foreign``), trained and
converted through the real CLI, for the converter's and the whole-chain tests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from converter.examples_foreign import EXAMPLES, convert_argv, train
from tests.support.converter import Converted, cli_capture

FOREIGN_MODULES = ("onnx", "onnxruntime", "onnx2tf", "tf_keras", "skl2onnx")

needs_foreign = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in FOREIGN_MODULES),
    reason="the converter-onnx / converter-sklearn extras are not installed",
)

MODES = {"cancer-gb": "auto", "diabetes-pipeline": "auto", "cancer-onnx": "float16"}
"""auto for the two estimators (every mode measured), one mode for the ONNX file (same model)."""


def convert_foreign(folder: Path, key: Path) -> dict[str, tuple[Path, Converted]]:
    """Each example trained into ``folder/NAME/model`` and converted; by name: (model folder, run)."""
    converted = {}
    for name in EXAMPLES:
        model = folder / name / "model"
        train(name, model)
        out, report = folder / name / f"{name}.bundle", folder / name / "report.json"
        run = cli_capture(convert_argv(name, model, key, out, MODES[name], "--report-json", str(report)))
        assert run.code == 0, run.stderr
        converted[name] = (model, Converted(run, out, json.loads(report.read_text())))
    return converted


needs_torch = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in (*FOREIGN_MODULES, "torch", "onnxscript")),
    reason="the converter-torch extra is not installed (not in dev: torch brings several GB of CUDA "
    "libraries; pip install 'edgefleet[converter-torch]')",
)
TORCH_FACTORY = "torch:converter.examples_torch:forecaster"


def convert_torch(folder: Path, key: Path, mode: str = "auto") -> Converted:
    """The PyTorch sunspots forecaster (``converter.examples_torch``) converted by the CLI."""
    from converter.examples_torch import write_data

    write_data(folder)
    out, report = folder / "sunspots-torch.bundle", folder / "report.json"
    run = cli_capture([
        "convert", TORCH_FACTORY, "--calibration", str(folder / "calibration.npz"),
        "--evaluation", str(folder / "evaluation.npz"), "--mode", mode, "--name", "sunspots-torch",
        "--version", "1.0.0", "--task", "forecast", "--key", str(key), "--out", str(out),
        "--report-json", str(report),
    ])  # fmt: skip
    assert run.code == 0, run.stderr
    return Converted(run, out, json.loads(report.read_text()))
