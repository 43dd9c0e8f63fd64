"""``edgefleet bundle``: a ready-made .tflite packaged, validated in the runtimes and signed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.bundle import read_bundle
from protocol.manifest import QuantizationMode
from protocol.signing import TrustedKeys
from tests.support.converter import Converted, cli_capture

pytestmark = pytest.mark.slow


@pytest.fixture
def ready_tflite(auto_converted: dict[str, Converted], tmp_path: Path) -> Path:
    """The digits int8 model as another toolchain would hand it over: just the .tflite."""
    path = tmp_path / "digits.tflite"
    path.write_bytes(read_bundle(auto_converted["digits"].bundle).members["model.tflite"])
    return path


def _argv(model: Path, key: Path, out: Path, *extra: str) -> list[str]:
    return [
        "bundle", str(model), "--name", "digits-ready", "--version", "2.0.0",
        "--task", "classification", "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip


def test_bundle_with_evaluation_data(
    ready_tflite: Path, digits_model: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out, report = tmp_path / "ready.bundle", tmp_path / "report.json"
    extra = [
        "--evaluation",
        str(digits_model / "evaluation.npz"),
        "--labels",
        str(digits_model / "labels.txt"),
        "--no-input-stats",  # for agents that predate the input drift tests
    ]
    run = cli_capture(_argv(ready_tflite, signing_keys[0], out, *extra, "--report-json", str(report)))
    assert run.code == 0, run.stderr
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert manifest.quantization is QuantizationMode.INT8 and manifest.inputs[0].dtype == "int8"
    assert manifest.conversion is not None and manifest.conversion.source == "tflite"
    assert manifest.tools.tensorflow is None and manifest.runtimes["tflite-runtime"].loads
    assert manifest.validation is not None and manifest.validation.metrics["accuracy"] > 0.9
    assert manifest.baseline is not None and manifest.baseline.class_frequencies is not None
    assert manifest.baseline.input_features is None and len(manifest.baseline.input_ranges) == 64
    assert manifest.labels == [str(d) for d in range(10)]
    assert json.loads(report.read_text())["validation"]["samples"] == 450
    assert "accuracy" in run.stdout and "F1 (macro)" in run.stdout


def test_bundle_without_evaluation_data(
    ready_tflite: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ready.bundle"
    run = cli_capture(_argv(ready_tflite, signing_keys[0], out))
    assert run.code == 0, run.stderr
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert manifest.validation is None and manifest.baseline is None and manifest.smoke.samples == 8
    assert "note: no --evaluation: the 8 smoke samples recorded are random model inputs" in run.stdout


def test_bundle_refuses_what_is_not_tflite(
    digits_model: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "x.bundle"
    run = cli_capture(_argv(digits_model / "model.keras", signing_keys[0], out))
    assert run.code == 2 and not out.exists()
    assert run.stderr.strip() == (
        f"edgefleet bundle: error: {digits_model / 'model.keras'} is not a TFLite flatbuffer "
        "(no TFL3 identifier); convert it with edgefleet convert"
    )
