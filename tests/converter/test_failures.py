"""Real TensorFlow failures, each with the exact error an operator sees: a conversion that
segfaults, a model that needs SELECT_TF_OPS, and a model over its accuracy budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.converter import cli_capture, convert_argv, factory_argv, write_sequences

pytestmark = pytest.mark.slow

SEGFAULT = (
    "the conversion worker crashed (SIGSEGV) in mode int8 (likely cause: Keras 3 LSTM kept as a WHILE "
    "loop (--rnn keep): TensorFlow 2.21 crashes calibrating it; use --rnn unroll (the default) or a "
    "float mode)"
)


def test_segfaulting_mode_is_a_typed_error_and_auto_moves_on(
    tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    data = write_sequences(tmp_path, (12, 1))
    out, report = tmp_path / "lstm.bundle", tmp_path / "report.json"
    argv = factory_argv(
        "lstm_fixed_batch", data, signing_keys[0], out, "auto",
        "--rnn", "keep", "--report-json", str(report),
    )  # fmt: skip
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    rows = {row["mode"]: row for row in json.loads(report.read_text())["conversion"]["candidates"]}
    assert rows["int8"]["error"].startswith(SEGFAULT)
    assert rows["int16x8"]["error"].startswith(SEGFAULT.replace("mode int8", "mode int16x8"))
    assert rows["none"]["ok"] and rows["float16"]["ok"]
    conversion = json.loads(report.read_text())["conversion"]
    assert conversion["recurrent"] == "LSTM x1: kept (--rnn keep); became a WHILE loop (not the fused op)"
    assert "int8: failed: " + SEGFAULT in run.stderr


def test_segfaulting_single_mode_fails_in_one_line(tmp_path: Path, signing_keys: tuple[Path, Path]) -> None:
    data = write_sequences(tmp_path, (12, 1))
    out = tmp_path / "lstm.bundle"
    argv = factory_argv("lstm_fixed_batch", data, signing_keys[0], out, "int8", "--rnn", "keep")
    run = cli_capture(argv)
    assert run.code == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("edgefleet convert: error: " + SEGFAULT)
    # The crash's own line (faulthandler's innermost frame), not a warning TensorFlow printed before.
    assert "; last output: Fatal Python error: Segmentation fault in " in last
    assert "warnings.warn(" not in run.stderr
    assert not out.exists()


def test_select_tf_ops_are_never_added(tmp_path: Path, signing_keys: tuple[Path, Path]) -> None:
    data = write_sequences(tmp_path, (4,))
    out = tmp_path / "det.bundle"
    run = cli_capture(factory_argv("select_ops_model", data, signing_keys[0], out, "none"))
    assert run.code == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "edgefleet convert: error: mode none: the model needs TensorFlow ops that TFLite's builtin ops "
        "cannot express and the agent's runtimes cannot run (SELECT_TF_OPS is never enabled): "
        "MatrixDeterminant; replace them in the model"
    )
    assert not out.exists()


def test_accuracy_gate_exceeded(tmp_path: Path, digits_model: Path, signing_keys: tuple[Path, Path]) -> None:
    """Calibration data at 5 % of the real input range: int8 clips every real input."""
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=np.load(digits_model / "calibration.npz")["x"] * 0.05)
    out = tmp_path / "digits.bundle"
    argv = convert_argv(digits_model, signing_keys[0], out, "int8", "--max-drop", "accuracy=0.01")
    argv[argv.index("--calibration") + 1] = str(calibration)
    run = cli_capture(argv)
    assert run.code == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "edgefleet convert: error: mode int8 is outside the accuracy budget: accuracy dropped by +"
    )
    assert last.endswith(
        "(budget accuracy=0.01); try another --mode (or --mode auto), more calibration data, "
        "or --float-layers"
    )
    assert "but the calibration data only [0, 0.05]" in run.stderr  # the range warning came first
    # The table and TensorFlow's per-layer report are on stdout.
    assert "modes tried (budget: accuracy=0.01" in run.stdout and "over budget" in run.stdout
    assert "worst int8 layers (TensorFlow quantization debugger" in run.stdout
    assert not out.exists()


def test_float_layers_are_kept_in_float(
    tmp_path: Path, digits_model: Path, signing_keys: tuple[Path, Path]
) -> None:
    out, report = tmp_path / "digits.bundle", tmp_path / "report.json"
    argv = convert_argv(
        digits_model, signing_keys[0], out, "int8", "--float-layers", "dense", "--report-json", str(report)
    )
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    conversion = json.loads(report.read_text())["conversion"]
    assert conversion["float_layers"] == ["dense"]
    # The dense layer's float weights stay in the model: bigger than a full-int8 one (~47 KB).
    assert json.loads(report.read_text())["model_size"] > 100_000
    assert "float layers    dense" in run.stdout


def test_unknown_float_layer_is_named(
    tmp_path: Path, digits_model: Path, signing_keys: tuple[Path, Path]
) -> None:
    out = tmp_path / "digits.bundle"
    run = cli_capture(convert_argv(digits_model, signing_keys[0], out, "int8", "--float-layers", "nosuch"))
    assert run.code == 2 and not out.exists()
    assert run.stderr.strip().splitlines()[-1] == (
        "edgefleet convert: error: --float-layers nosuch: no such layer in the converted model "
        "(use the names the int8 per-layer report or model.summary() shows)"
    )
