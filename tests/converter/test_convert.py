"""End-to-end conversions of the digits model through ``edgefleet convert``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.bundle import read_bundle, read_samples
from protocol.manifest import QuantizationMode, TaskKind
from protocol.signing import TrustedKeys
from runtime import compare_outputs, load_model, run_samples
from tests.support.converter import Converted, run_cli

pytestmark = pytest.mark.slow


def test_int8_bundle_verifies_with_the_operator_key(
    int8_bundle: Converted, signing_keys: tuple[Path, Path]
) -> None:
    _, public = signing_keys
    manifest = read_bundle(int8_bundle.bundle).verify(TrustedKeys.from_paths([public]))
    assert (manifest.name, manifest.version, manifest.task) == ("digits", "1.0.0", TaskKind.CLASSIFICATION)
    assert manifest.quantization is QuantizationMode.INT8
    assert set(manifest.files) == {"model.tflite", "samples.npz", "labels.txt"}
    assert manifest.labels == [str(d) for d in range(10)]
    (spec_in,) = manifest.inputs
    (spec_out,) = manifest.outputs
    assert spec_in.shape == [-1, 8, 8, 1] and spec_in.dtype == "int8" and spec_in.quantization is not None
    assert spec_out.shape == [-1, 10] and spec_out.dtype == "int8" and spec_out.quantization is not None
    assert manifest.tools.tensorflow and manifest.tools.tflite_runtime == "2.14.0"
    assert manifest.runtimes["tflite-runtime"].loads and manifest.runtimes["litert"].loads
    assert manifest.runtimes["tflite-runtime"].latency_ms_p50 is not None
    validation = manifest.validation
    assert validation is not None and validation.runtime == "tflite-runtime"
    assert validation.samples == 450 and validation.top1_agreement is not None
    assert validation.top1_agreement >= 0.97
    baseline = manifest.baseline
    assert baseline is not None and baseline.samples == 450
    assert baseline.class_frequencies is not None and sum(baseline.class_frequencies) == pytest.approx(1.0)
    assert baseline.confidence_histogram is not None and sum(baseline.confidence_histogram.counts) == 450
    assert len(baseline.input_ranges) == 64
    assert all(0.0 <= r.min <= r.mean <= r.max <= 1.0 for r in baseline.input_ranges)
    # The inputs' feature statistics the agent's drift tests read: every pixel of the 8x8 image.
    features = baseline.input_features
    assert features is not None and features.values == 64 and len(features.mean) == 64
    assert all(0.0 <= m <= 1.0 for m in features.mean) and max(features.std) > 0.2
    assert all(sum(shares) == pytest.approx(1.0, abs=1e-5) for shares in features.shares)
    assert features.mode[0] == 0.0 and features.mode_share[0] == 1.0  # a border pixel: always blank
    assert features.precision_cholesky is None  # 64 features: no joint test (bounded manifest)
    assert manifest.smoke.samples == 8


def test_int8_keeps_accuracy_and_shrinks_the_model(int8_bundle: Converted) -> None:
    validation = int8_bundle.report["validation"]
    drop = validation["metrics"]["accuracy_source"] - validation["metrics"]["accuracy"]
    assert validation["metrics"]["accuracy_source"] > 0.9
    assert drop <= 0.02
    # The reference is the float32 weight bytes, a lower bound of the float32 .tflite size.
    assert int8_bundle.report["model_size"] <= 0.35 * int8_bundle.report["float32_weight_bytes"]


def test_samples_reproduce_in_tflite_runtime(int8_bundle: Converted, signing_keys: tuple[Path, Path]) -> None:
    bundle = read_bundle(int8_bundle.bundle)
    manifest = bundle.verify(TrustedKeys.from_paths([signing_keys[1]]))
    samples = read_samples(bundle.members["samples.npz"])
    (x,) = samples.inputs
    (y,) = samples.outputs
    # Stored compact: already quantized, in the model's input dtype.
    assert x.shape == (8, 8, 8, 1) and x.dtype == np.int8
    assert y.shape == (8, 10) and y.dtype == np.float32
    assert manifest.primary_output == manifest.outputs[0].name
    model = load_model(bundle.members["model.tflite"], runtime="tflite-runtime")
    # As the agent's smoke test runs them: exactly the recorded outputs, in the recording runtime.
    outputs = run_samples(model, samples.inputs, dynamic_batch=manifest.inputs[0].fixed_batch is None)
    assert np.array_equal(outputs[0], y)
    assert compare_outputs(outputs, samples.outputs, manifest.smoke.atol) is None
    # One sample at a time (how a device serves requests) stays within the tolerance too.
    single = np.concatenate([run_samples(model, [x[i : i + 1]], dynamic_batch=True)[0] for i in range(8)])
    assert np.max(np.abs(single - y)) <= manifest.smoke.atol


def test_report_table_and_progress(int8_bundle: Converted) -> None:
    out, err = int8_bundle.run.stdout, int8_bundle.run.stderr
    for expected in (
        "int8",
        "accuracy",
        "top-1 agreement",
        "max abs error",
        "tflite-runtime",
        "litert",
        "bytes",
    ):
        assert expected in out
    assert "converting to TFLite (int8, none)" in err and "validating int8 in tflite-runtime" in err
    assert int8_bundle.report["mode"] == "int8" and int8_bundle.report["runtimes"]["litert"]["loads"]


def test_dynamic_refused_for_tflite_runtime(dynamic_refused: Converted) -> None:
    run = dynamic_refused.run
    assert run.code == 2
    assert "FULLY_CONNECTED" in run.stderr and "tflite-runtime" in run.stderr
    assert "--mode int8 or float16" in run.stderr and "--runtime litert" in run.stderr
    assert len([line for line in run.stderr.splitlines() if "error:" in line]) == 1
    assert not dynamic_refused.bundle.exists()


def test_dynamic_accepted_for_litert(dynamic_litert: Converted, signing_keys: tuple[Path, Path]) -> None:
    manifest = read_bundle(dynamic_litert.bundle).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert manifest.quantization is QuantizationMode.DYNAMIC
    assert manifest.validation is not None and manifest.validation.runtime == "litert"
    refused = manifest.runtimes["tflite-runtime"]
    assert not refused.loads and refused.error is not None and "FULLY_CONNECTED" in refused.error
    assert manifest.runtimes["litert"].loads
    assert manifest.inputs[0].dtype == "float32" and manifest.inputs[0].quantization is None
    assert manifest.smoke.atol == pytest.approx(1e-5)


def test_float16_regression(
    regression_model: Path,
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "diabetes.bundle"
    argv = [
        "convert", str(regression_model / "model.keras"),
        "--calibration", str(regression_model / "calibration.npz"),
        "--evaluation", str(regression_model / "evaluation.npz"),
        "--mode", "float16", "--name", "diabetes", "--version", "0.1.0", "--task", "regression",
        "--key", str(signing_keys[0]), "--out", str(out), "--smoke-samples", "4",
    ]  # fmt: skip
    run = run_cli(capsys, argv)
    assert run.code == 0, run.stderr
    assert "MAE" in run.stdout
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert manifest.quantization is QuantizationMode.FLOAT16 and manifest.task is TaskKind.REGRESSION
    assert manifest.inputs[0].shape == [-1, 10] and manifest.outputs[0].dtype == "float32"
    validation = manifest.validation
    assert validation is not None and validation.top1_agreement is None
    assert abs(validation.metrics["mae"] - validation.metrics["mae_source"]) < 0.01
    baseline = manifest.baseline
    assert (
        baseline is not None and baseline.output_histogram is not None and baseline.class_frequencies is None
    )
    assert len(baseline.input_ranges) == 10 and manifest.labels is None and manifest.smoke.samples == 4
    features = baseline.input_features
    assert features is not None and len(features.mean) == 10
    assert features.precision_cholesky is not None and len(features.precision_cholesky) == 55
