"""Source models other than .keras (HDF5, SavedModel, a factory), data other than .npz (CSV,
.npy), and dynamic input dimensions fixed from the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.bundle import read_bundle
from protocol.signing import TrustedKeys
from tests.support.converter import cli_capture, convert_argv, factory_argv, write_sequences

pytestmark = pytest.mark.slow

_EXPORT = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras
model = keras.models.load_model(sys.argv[1])
model.save(os.path.join(sys.argv[2], "model.h5"))
model.export(os.path.join(sys.argv[2], "saved"))
"""


@pytest.fixture(scope="module")
def exported_digits(digits_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model as a legacy HDF5 file and as a SavedModel directory."""
    folder = tmp_path_factory.mktemp("exported")
    subprocess.run(
        [sys.executable, "-c", _EXPORT, str(digits_model / "model.keras"), str(folder)],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.mark.parametrize(("kind", "member"), [("h5", "model.h5"), ("saved_model", "saved")])
def test_hdf5_and_saved_model_convert(
    kind: str,
    member: str,
    *,
    exported_digits: Path,
    digits_model: Path,
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    out, report = tmp_path / "digits.bundle", tmp_path / "report.json"
    argv = convert_argv(digits_model, signing_keys[0], out, "float16", "--report-json", str(report))
    argv[1] = str(exported_digits / member)
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert manifest.conversion is not None and manifest.conversion.source == kind
    assert manifest.validation is not None and manifest.validation.top1_agreement == 1.0
    assert manifest.inputs[0].shape == [-1, 8, 8, 1]


def test_float_modes_are_not_calibrated(
    digits_model: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """float16 never uses the calibration data: no "calibrating", no range or sample-count warning,
    even for 20 samples at 5 % of the evaluation range (which int8 warns about)."""
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=np.load(digits_model / "calibration.npz")["x"][:20] * 0.05)
    argv = convert_argv(digits_model, signing_keys[0], tmp_path / "digits.bundle", "float16")
    argv[argv.index("--calibration") + 1] = str(calibration)
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    assert "converting to TFLite (float16, none) in a TensorFlow subprocess..." in run.stderr
    assert "calibrat" not in run.stderr + run.stdout


def test_dynamic_dimension_is_fixed_from_the_data(tmp_path: Path, signing_keys: tuple[Path, Path]) -> None:
    data = write_sequences(tmp_path, (12, 1))
    out = tmp_path / "conv.bundle"
    run = cli_capture(factory_argv("dynamic_length_model", data, signing_keys[0], out, "none"))
    assert run.code == 0, run.stderr
    assert "note: input dimensions [1] fixed to [12] from the calibration data" in run.stdout
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert manifest.inputs[0].shape == [-1, 12, 1]
    assert manifest.conversion is not None and manifest.conversion.source == "factory"


def test_factory_that_returns_no_model(tmp_path: Path, signing_keys: tuple[Path, Path]) -> None:
    data = write_sequences(tmp_path, (4,))
    run = cli_capture(factory_argv("not_a_model", data, signing_keys[0], tmp_path / "x.bundle", "none"))
    assert run.code == 2
    assert run.stderr.strip().splitlines()[-1].endswith("did not give a Keras model but dict")


def test_csv_calibration_and_evaluation(
    example_models: dict[str, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = example_models["diabetes"]
    calibration = np.load(folder / "calibration.npz")["x"]
    evaluation = np.load(folder / "evaluation.npz")
    header = ",".join(f"f{i}" for i in range(10))
    np.savetxt(tmp_path / "cal.csv", calibration, delimiter=",", header=header, comments="")
    table = np.hstack([evaluation["x"], evaluation["y"]])
    np.savetxt(tmp_path / "eval.csv", table, delimiter=",", header=header + ",y", comments="")
    out, report = tmp_path / "diabetes.bundle", tmp_path / "report.json"
    argv = [
        "convert", str(folder / "model.keras"),
        "--calibration", str(tmp_path / "cal.csv"), "--evaluation", str(tmp_path / "eval.csv"),
        "--mode", "int8", "--io-type", "float", "--name", "diabetes", "--version", "1.0.0",
        "--task", "regression", "--key", str(signing_keys[0]), "--out", str(out),
        "--max-drop", "mae=5%", "--report-json", str(report),
    ]  # fmt: skip
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    result = json.loads(report.read_text())
    assert result["validation"]["samples"] == len(table)
    # float I/O: the int8 model takes and returns float32 tensors.
    assert result["inputs"][0]["dtype"] == "float32" and result["outputs"][0]["dtype"] == "float32"
    assert result["conversion"]["io_type"] == "float"
    assert {"mae", "rmse", "mae_source", "rmse_source"} <= set(result["validation"]["metrics"])
