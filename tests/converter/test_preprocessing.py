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
from converter.preprocessing import apply, resolve
from protocol.bundle import read_bundle, read_samples
from protocol.manifest import Preprocessing
from protocol.signing import TrustedKeys
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
    path.write_text(json.dumps({"method": "in_model", "scale": 2.0}))
    with pytest.raises(InputError, match=f"preprocessing file {path}: .*takes no scale or offset"):
        _resolve(np.zeros((4, 3), dtype=np.float32), file=path)


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
