"""Bundles the converter writes install on an agent: the fixed-batch cases that used to be refused.

``convert`` of a GRU forecaster exported at batch 1 (the RNN unroll path, and ``--mode auto``'s
choice) and ``bundle`` of a fixed-batch TFLite model with two outputs made by TensorFlow here.
Each is installed with the agent's own verify, stage and smoke test (``tests.converter.installs``)
in every runtime its manifest says loads it; the conftest does the same for every other bundle
the converter's tests write.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.bundle import read_bundle, read_samples
from protocol.signing import TrustedKeys
from tests.converter.installs import install_on_agent
from tests.support.converter import cli_capture, factory_argv, write_sequences

pytestmark = pytest.mark.slow

_TWO_HEADS = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras, numpy as np, tensorflow as tf
keras.utils.set_random_seed(0)
features = keras.Input((16,), batch_size=2, name="features")
hidden = keras.layers.Dense(12, activation="relu")(features)
boxes = keras.layers.Dense(4, activation="sigmoid", name="boxes")(hidden)
scores = keras.layers.Dense(3, activation="softmax", name="scores")(hidden)
converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(features, [boxes, scores]))
data = np.random.default_rng(0).random((64, 16)).astype(np.float32)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([data[i : i + 2]] for i in range(0, 64, 2))
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = tf.int8
converter.inference_output_type = tf.int8
with open(sys.argv[1], "wb") as handle:
    handle.write(converter.convert())
np.savez(sys.argv[2], x=data[:21], y=np.arange(21) % 3)

# Two models bundle must refuse, in words about the user's file:
# weights-only ("dynamic range") quantization writes FULLY_CONNECTED version 12: LiteRT only;
dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64), keras.layers.Dense(1)])
converter = tf.lite.TFLiteConverter.from_keras_model(dense)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
with open(sys.argv[3], "wb") as handle:
    handle.write(converter.convert())


# and a custom op no runtime has a kernel for.
@tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
def forward(x):
    return {"y": tf.math.bessel_i1e(x) * 2.0}


converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], forward)
converter.allow_custom_ops = True
with open(sys.argv[4], "wb") as handle:
    handle.write(converter.convert())
# An image model whose one float32 sample (128 x 128 x 3) is 192 KiB: few smoke samples fit.
image = keras.Input((128, 128, 3), name="image")
pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, strides=4)(image))
converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(image, keras.layers.Dense(1)(pooled)))
with open(sys.argv[5], "wb") as handle:
    handle.write(converter.convert())
"""


@pytest.fixture(scope="module")
def made_by_tf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TFLite models made by TensorFlow here, as another toolchain would hand them over."""
    folder = tmp_path_factory.mktemp("made-by-tf")
    names = ("two_heads.tflite", "evaluation.npz", "dynamic.tflite", "custom.tflite", "image.tflite")
    subprocess.run(
        [sys.executable, "-c", _TWO_HEADS, *(str(folder / name) for name in names)],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture
def two_heads(made_by_tf: Path) -> tuple[Path, Path]:
    """An int8 TFLite model with batch fixed at 2 and two outputs (boxes [2, 4], scores [2, 3])."""
    return made_by_tf / "two_heads.tflite", made_by_tf / "evaluation.npz"


def _bundle_argv(model: Path, key: Path, out: Path, task: str, *extra: str) -> list[str]:
    return [
        "bundle", str(model), "--name", "two-heads", "--version", "1.0.0", "--task", task,
        "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip


def test_fixed_batch_two_outputs_bundle_installs(
    two_heads: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "two-heads.bundle"
    run = cli_capture(_bundle_argv(two_heads[0], signing_keys[0], out, "regression", "--smoke-samples", "5"))
    assert run.code == 0, run.stderr
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert [spec.shape for spec in manifest.inputs] == [[2, 16]]
    assert sorted(spec.shape for spec in manifest.outputs) == [[2, 3], [2, 4]]
    assert all(spec.fixed_batch == 2 and spec.batch_dim == 0 for spec in manifest.inputs + manifest.outputs)
    assert manifest.primary_output == manifest.outputs[0].name
    samples = read_samples(read_bundle(out).members["samples.npz"])
    # Every output recorded; 5 samples on a batch of 2: the last chunk was padded, never resized.
    assert [a.shape[0] for a in samples.inputs + samples.outputs] == [5, 5, 5]
    assert samples.inputs[0].dtype == np.int8
    assert "1 inputs (features" in run.stdout and "and 2 outputs" in run.stdout
    assert list(install_on_agent(out, signing_keys[1], tmp_path / "agent")) == list(manifest.runtimes)


def test_primary_output_chooses_what_metrics_use(
    two_heads: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    probe = tmp_path / "probe.bundle"
    assert cli_capture(_bundle_argv(two_heads[0], signing_keys[0], probe, "regression")).code == 0
    outputs = read_bundle(probe).verify(TrustedKeys.from_paths([signing_keys[1]])).outputs
    scores = next(spec.name for spec in outputs if spec.shape == [2, 3])
    out = tmp_path / "classifier.bundle"
    argv = _bundle_argv(
        two_heads[0], signing_keys[0], out, "classification",
        "--evaluation", str(two_heads[1]), "--primary-output", scores,
    )  # fmt: skip
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert manifest.primary_output == scores
    assert manifest.validation is not None and manifest.validation.samples == 21
    assert manifest.baseline is not None and len(manifest.baseline.class_frequencies or []) == 3
    wrong = cli_capture(_bundle_argv(two_heads[0], signing_keys[0], tmp_path / "x.bundle", "regression",
                                     "--primary-output", "nosuch"))  # fmt: skip
    assert wrong.code == 2 and "--primary-output nosuch: the model has no such output" in wrong.stderr


def test_custom_op_is_named_with_the_users_file(
    made_by_tf: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    model = made_by_tf / "custom.tflite"
    run = cli_capture(_bundle_argv(model, signing_keys[0], tmp_path / "c.bundle", "regression"))
    assert run.code == 2 and not (tmp_path / "c.bundle").exists()
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edgefleet bundle: error: {model} loads in no installed runtime: ")
    assert "custom op BesselI1e" in last and "edgefleet-bundle-" not in last


def test_ready_made_model_is_not_told_to_try_another_mode(
    made_by_tf: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    run = cli_capture(
        _bundle_argv(made_by_tf / "dynamic.tflite", signing_keys[0], tmp_path / "d.bundle", "regression")
    )
    assert run.code == 2
    last = run.stderr.strip().splitlines()[-1]
    assert "does not load in tflite-runtime, which --runtime requires" in last and "--mode" not in last
    assert "re-export it from its source" in last and "--runtime litert if the devices run it" in last


def test_samples_stay_small_for_big_tensors(
    made_by_tf: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out, report = tmp_path / "image.bundle", tmp_path / "report.json"
    argv = _bundle_argv(
        made_by_tf / "image.tflite", signing_keys[0], out, "regression", "--report-json", str(report)
    )
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    figures = json.loads(report.read_text())
    # max(256 KiB, 10 % of the model): one 192 KiB sample of uniform float32 noise would barely
    # fit; the random inputs are made to compress, so every asked sample fits.
    kept = figures["smoke"]["samples"]
    assert kept == 8 and figures["samples_size"] <= 256 * 1024
    assert f"no --evaluation: the {kept} smoke samples recorded are random model inputs" in run.stdout
    assert f"samples.npz {figures['samples_size']:,}" in run.stdout
    assert install_on_agent(out, signing_keys[1], tmp_path / "agent")


@pytest.fixture(scope="module")
def gru_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gru")
    write_sequences(folder, (12, 1))
    return folder


def test_gru_forecaster_auto_installs(
    gru_folder: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    data = (gru_folder / "calibration.npz", gru_folder / "evaluation.npz")
    out, report = tmp_path / "gru.bundle", tmp_path / "report.json"
    run = cli_capture(
        factory_argv("gru_forecaster", data, signing_keys[0], out, "auto", "--report-json", str(report))
    )
    assert run.code == 0, run.stderr
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert manifest.inputs[0].shape == [1, 12, 1] and manifest.inputs[0].fixed_batch == 1
    conversion = json.loads(report.read_text())["conversion"]
    assert conversion["recurrent"].startswith("GRU x1: unrolled for the fixed sequence length")
    assert "picked by --mode auto" in run.stdout and "auto chose" in run.stdout
    assert install_on_agent(out, signing_keys[1], tmp_path / "agent")


def test_gru_int8_warns_about_size_and_latency(
    gru_folder: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    data = (gru_folder / "calibration.npz", gru_folder / "evaluation.npz")
    out = tmp_path / "gru-int8.bundle"
    run = cli_capture(factory_argv("gru_forecaster", data, signing_keys[0], out, "int8"))
    assert run.code == 0, run.stderr
    assert "warning: int8 on unrolled recurrent layers" in run.stdout
    assert install_on_agent(out, signing_keys[1], tmp_path / "agent")
