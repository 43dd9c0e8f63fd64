"""The preprocessing a model was trained with: recorded, applied to the raw data exactly as the
agent applies it to requests, or found inside the model (``in_model``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from converter.errors import InputError
from converter.package import fit_samples, samples_limit
from converter.preprocessing import Entry, apply, resolve, resolve_inputs
from converter.tflite_bundle import random_inputs
from protocol.bundle import read_bundle, read_samples
from protocol.manifest import Preprocessing, TensorSpec
from protocol.samples import read_samples as parse_samples
from protocol.signing import TrustedKeys
from runtime import InputTransform, preprocess
from tests.converter.installs import install_on_agent
from tests.support.converter import cli_capture, factory_argv, write_sequences

RAW_MEAN, RAW_STD = 3.0, 7.0
"""The regression model was trained on standardized features; these make them raw again."""


def _resolve(calibration: npt.NDArray[np.float32], **options: Any) -> Preprocessing:
    """``resolve`` with every option absent unless given; these tests always describe one."""
    fields: dict[str, Any] = dict.fromkeys(
        ("method", "mean", "std", "scale", "offset", "file", "channel_order")
    )
    pre = resolve(**{**fields, **options}, calibration=calibration)
    assert pre is not None
    return pre


def test_standardize_is_computed_per_feature_from_calibration() -> None:
    rng = np.random.default_rng(0)
    raw = (rng.normal(size=(500, 3)) * [1.0, 10.0, 0.5] + [5.0, -2.0, 0.0]).astype(np.float32)
    raw[:, 2] = 4.0  # a constant feature: centred, never divided by zero
    pre = _resolve(raw, method="standardize")
    assert pre.method == "standardize" and "1 constant feature" in pre.description
    model_inputs = apply(pre, raw)
    assert np.allclose(model_inputs[:, :2].mean(axis=0), 0.0, atol=1e-4)
    assert np.allclose(model_inputs[:, :2].std(axis=0), 1.0, atol=1e-4)
    assert np.all(model_inputs[:, 2] == 0.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mean": [1.0, 2.0]}, "give both --preprocess-mean and --preprocess-std"),
        ({"mean": [1.0, 2.0], "std": [1.0, 0.0]}, "every standard deviation must be positive"),
        (
            {"mean": [1.0, 2.0], "std": [1.0, 2.0]},
            "--preprocess-mean has 2 values but the inputs' last axis has 3",
        ),
        ({"method": "minmax", "scale": [2.0]}, "describe --preprocessing scale, not minmax"),
        ({"method": "scale"}, "--preprocessing scale needs --preprocess-scale"),
    ],
)
def test_contradicting_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        _resolve(np.zeros((10, 3), dtype=np.float32), **options)


def test_preprocessing_file(tmp_path: Path) -> None:
    path = tmp_path / "pre.json"
    path.write_text(json.dumps({"method": "scale", "scale": 0.5, "offset": 1.0, "description": "camera"}))
    pre = _resolve(np.zeros((4, 3), dtype=np.float32), file=path, channel_order="bgr")
    assert (pre.method, pre.scale, pre.offset, pre.channel_order) == ("scale", 0.5, 1.0, "bgr")
    # The manifest's own form, as the worked examples write it: recorded as given.
    path.write_text(
        json.dumps({"method": "standardize", "offset": [1.0, 2.0, 3.0], "scale": [0.5, 1.0, 2.0]})
    )
    pre = _resolve(np.zeros((4, 3), dtype=np.float32), file=path)
    assert (pre.method, pre.offset, pre.scale) == ("standardize", [1.0, 2.0, 3.0], [0.5, 1.0, 2.0])
    path.write_text(json.dumps({"method": "in_model", "scale": 2.0}))
    with pytest.raises(InputError, match=f"preprocessing file {path}: .*takes no scale or offset"):
        _resolve(np.zeros((4, 3), dtype=np.float32), file=path)


def test_explicit_min_max() -> None:
    pre = _resolve(np.zeros((4, 2), dtype=np.float32), minimum=[0.0, -1.0], maximum=[10.0, 1.0])
    assert (pre.method, pre.offset, pre.scale) == ("minmax", [0.0, -1.0], [float(np.float32(0.1)), 0.5])
    raw = np.array([[5.0, 0.0], [10.0, 1.0]], dtype=np.float32)
    assert np.allclose(apply(pre, raw), [[0.5, 0.5], [1.0, 1.0]])
    with pytest.raises(InputError, match="--preprocess-max 0,1 must be above --preprocess-min 0,-1"):
        _resolve(np.zeros((4, 2), dtype=np.float32), minimum=[0.0, -1.0], maximum=[0.0, 1.0])
    with pytest.raises(InputError, match="give both --preprocess-min and --preprocess-max"):
        _resolve(np.zeros((4, 2), dtype=np.float32), minimum=[0.0])


def test_per_input_file_entries(tmp_path: Path) -> None:
    path = tmp_path / "pre.json"
    path.write_text(
        json.dumps(
            {
                "image": {"scale": 0.5, "offset": 1.0, "channel_order": "bgr"},
                "vector": {"method": "minmax", "min": [0, 1], "max": [2, 5]},
            }
        )
    )
    found = resolve_inputs(Entry(), path, ["vector", "image", "mask"], [None, None, None], features=[2, 3, 1])
    assert sorted(found) == ["image", "vector"]  # an input without an entry takes raw values
    assert (found["image"].method, found["image"].caller_channel_order) == ("scale", "rgb")
    assert (found["vector"].offset, found["vector"].scale) == ([0.0, 1.0], [0.5, 0.25])
    # The simple flags describe one input; a single object is refused for several inputs.
    with pytest.raises(InputError, match=r"the model has 2 inputs \(a, b\): the --preprocess\* options"):
        resolve_inputs(Entry(scale=2.0), None, ["a", "b"], [None, None])
    path.write_text(json.dumps({"scale": 2.0}))
    with pytest.raises(InputError, match="holds one entry but the model has 2 inputs"):
        resolve_inputs(Entry(), path, ["a", "b"], [None, None])
    path.write_text(json.dumps({"a": {"scale": 2.0, "mean": [1.0]}}))
    with pytest.raises(InputError, match=r"pre.json, input 'a': mean/scale describe different methods"):
        resolve_inputs(Entry(), path, ["a", "b"], [None, None])


def test_channel_order_is_reversed_before_the_arithmetic() -> None:
    """The caller sends RGB, the model wants BGR: the last axis is reversed, then each channel
    gets the model's (BGR-ordered) offset; the same order is a no-op; integers pass unchanged."""
    pre = Preprocessing(
        method="scale", scale=1.0, offset=[100.0, 10.0, 1.0], channel_order="bgr", caller_channel_order="rgb"
    )
    rgb = np.array([[[1.0, 20.0, 300.0]]], dtype=np.float32)  # R=1, G=20, B=300
    assert preprocess(pre, rgb).tolist() == [[[200.0, 10.0, 0.0]]]
    same = Preprocessing(channel_order="bgr", caller_channel_order="bgr")
    assert InputTransform.of(same) is None and preprocess(same, rgb) is rgb
    only_order = Preprocessing(channel_order="bgr", caller_channel_order="rgb")
    assert preprocess(only_order, rgb).tolist() == [[[300.0, 20.0, 1.0]]]
    quantized = np.array([[[1, 2, 3]]], dtype=np.int8)
    assert preprocess(pre, quantized) is quantized
    # The converter records the caller's order only when it differs (older agents keep loading).
    assert (
        _resolve(np.zeros((2, 3), np.float32), method="none", channel_order="rgb").caller_channel_order
        is None
    )


def test_random_smoke_inputs_compress_and_stay_in_range() -> None:
    spec = TensorSpec(name="image", shape=[-1, 256, 256, 3], dtype="float32")
    limit = samples_limit(4_200_000)
    x = random_inputs(spec, 8, limit)
    assert x.shape == (8, 256, 256, 3) and x.dtype == np.float32
    assert float(x.min()) >= 0.0 and float(x.max()) < 1.0 and len(np.unique(x)) > 200
    fitted = fit_samples([x], [np.zeros((8, 10), np.float32)], 4_200_000)
    assert fitted.count == 8 and len(fitted.data) <= limit
    quantized = random_inputs(TensorSpec(name="q", shape=[1, 32, 32, 3], dtype="int8"), 2, limit)
    assert quantized.dtype == np.int8 and quantized.min() == -128 and quantized.max() == 127


def test_samples_are_trimmed_to_the_bound_measured_compressed() -> None:
    noise = np.random.default_rng(0).random((8, 128, 128, 3), dtype=np.float32)  # does not compress
    outputs = [np.zeros((8, 1), np.float32)]
    fitted = fit_samples([noise], outputs, 1000)
    assert 1 <= fitted.count < 8 and len(fitted.data) <= fitted.limit == 256 * 1024
    assert parse_samples(fitted.data).count == fitted.count
    big = np.random.default_rng(0).random((2, 256, 256, 3), dtype=np.float32)
    over = fit_samples([big], [np.zeros((2, 1), np.float32)], 1000)
    assert over.count == 1 and len(over.data) > over.limit  # the caller warns


@pytest.mark.slow
def test_raw_data_standardized_as_the_agent_does(
    regression_model: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Raw features in, the recorded standardization applied by the converter and by the agent:
    the agent's answer to a raw request equals what the converter recorded for the same sample."""
    for name in ("calibration", "evaluation"):
        with np.load(regression_model / f"{name}.npz") as data:
            arrays = {key: data[key] for key in data.files}
        arrays["x"] = arrays["x"] * np.float32(RAW_STD) + np.float32(RAW_MEAN)
        np.savez(tmp_path / f"{name}.npz", **arrays)
    out = tmp_path / "diabetes.bundle"
    argv = [
        "convert", str(regression_model / "model.keras"),
        "--calibration", str(tmp_path / "calibration.npz"), "--evaluation", str(tmp_path / "evaluation.npz"),
        "--mode", "int8", "--name", "diabetes", "--version", "1.0.0", "--task", "regression",
        "--key", str(signing_keys[0]), "--out", str(out),
        "--preprocess-mean", str(RAW_MEAN), "--preprocess-std", str(RAW_STD),
    ]  # fmt: skip
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    bundle = read_bundle(out)
    manifest = bundle.verify(TrustedKeys.from_paths([signing_keys[1]]))
    (pre,) = manifest.preprocessing.values()
    assert list(manifest.preprocessing) == [manifest.inputs[0].name]
    assert (pre.method, pre.offset, pre.scale) == ("standardize", RAW_MEAN, float(np.float32(1 / RAW_STD)))
    validation = manifest.validation
    assert validation is not None and validation.metrics["mae"] < 1.1 * validation.metrics["mae_source"]
    # The baseline's input ranges are the raw values callers send (the agent checks requests there).
    assert manifest.baseline is not None and manifest.baseline.input_ranges[0].mean > 1.0
    samples = read_samples(bundle.members["samples.npz"])
    with np.load(tmp_path / "evaluation.npz") as data:
        raw = data["x"][: samples.count]
    for served in install_on_agent(out, signing_keys[1], tmp_path / "agent").values():
        answer = served.predict(raw.astype(np.float32))
        assert np.max(np.abs(answer.tensors[0] - samples.outputs[0])) <= manifest.smoke.atol


@pytest.mark.slow
def test_normalization_layer_is_recorded_in_model(tmp_path: Path, signing_keys: tuple[Path, Path]) -> None:
    data = write_sequences(tmp_path, (6,))
    out = tmp_path / "normalized.bundle"
    run = cli_capture(factory_argv("normalized_regressor", data, signing_keys[0], out, "float16"))
    assert run.code == 0, run.stderr
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    (pre,) = manifest.preprocessing.values()
    assert pre.method == "in_model" and "Rescaling" in pre.description and not pre.applies
