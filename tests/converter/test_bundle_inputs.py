"""``edgefleet bundle`` of models shaped like published ones: preprocessing recorded per input,
applied to the evaluation data and by the agent; compact smoke samples for a big image model.

The models are ``tests.support.build_published``'s (built once, cached): a two-input model (a
16x16x3 image and an 8-feature vector) and a 256x256x3 float image classifier (~4.2 MB).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from converter.package import samples_limit
from protocol.bundle import read_bundle, read_samples
from protocol.signing import TrustedKeys
from protocol.tensors import dequantize_values
from runtime import installed_runtimes, load_model, model_specs, prepare_input
from tests.converter.installs import install_on_agent
from tests.support.converter import cli_capture
from tests.support.published_models import published_folder

__all__ = ["published_folder"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

VECTOR_MEAN = [0.5, 1.0, -2.0, 3.0, 0.0, 10.0, -1.0, 4.0]
VECTOR_STD = [2.0, 0.5, 1.0, 4.0, 1.0, 3.0, 0.25, 8.0]
PIXEL_SCALE = 1 / 255
"""The two-input model's image was "trained" on BGR pixels / 255 and its vector standardized."""


def _argv(model: Path, key: Path, out: Path, name: str, task: str, *extra: str) -> list[str]:
    return [
        "bundle", str(model), "--name", name, "--version", "1.0.0", "--task", task,
        "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip


def _raw(count: int, seed: int) -> dict[str, npt.NDArray[np.float32]]:
    """What callers send: RGB pixels 0..255 and raw features around the training mean."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 255, (count, 16, 16, 3)).astype(np.float32)
    image[..., 0] *= 0.2  # red dark, blue bright: a channel swap changes the answer
    vector = (rng.normal(size=(count, 8)) * VECTOR_STD + VECTOR_MEAN).astype(np.float32)
    return {"image": image, "vector": vector}


def _model_inputs(raw: dict[str, npt.NDArray[np.float32]], *, swap: bool = True) -> dict[str, Any]:
    """The preprocessing written out independently of ``runtime.preprocess``."""
    image = raw["image"][..., [2, 1, 0]] if swap else raw["image"]
    vector = (raw["vector"] - np.float32(VECTOR_MEAN)) * (1 / np.asarray(VECTOR_STD, np.float32))
    return {
        "image": (image * np.float32(PIXEL_SCALE)).astype(np.float32),
        "vector": vector.astype(np.float32),
    }


def _run_directly(tflite: bytes, runtime: str, inputs: dict[str, Any]) -> npt.NDArray[np.float32]:
    """The runtime driven directly, one sample per invoke, on model inputs (no agent code)."""
    model = load_model(tflite, runtime=runtime)  # type: ignore[arg-type]
    names = [spec.name for spec in model_specs(model)[0]]
    count = len(next(iter(inputs.values())))
    rows = []
    with model.lock:
        for i in range(count):
            batch = [prepare_input(inputs[n][i : i + 1], d) for n, d in zip(names, model.inputs, strict=True)]
            model.resize([a.shape for a in batch])
            (raw,) = model.invoke(batch)
            detail = model.outputs[0]
            rows.append(dequantize_values(raw, str(detail.dtype), detail.scale, detail.zero_point))
    return np.concatenate(rows)


def test_two_input_bundle_records_validates_and_serves_preprocessing(
    published_folder: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    tflite_path = published_folder / "two_inputs.tflite"
    tflite = tflite_path.read_bytes()
    order = [spec.name for spec in model_specs(load_model(tflite, runtime="tflite-runtime"))[0]]
    assert sorted(order) == ["image", "vector"]
    # Targets: the model's own answers to correctly preprocessed inputs, so that validation
    # scores 100 % exactly when it preprocesses the raw evaluation data as recorded.
    evaluation = _raw(40, seed=1)
    targets = np.argmax(_run_directly(tflite, "tflite-runtime", _model_inputs(evaluation)), axis=1)
    wrong = np.argmax(_run_directly(tflite, "tflite-runtime", _model_inputs(evaluation, swap=False)), axis=1)
    assert np.any(wrong != targets), "the test data must tell a channel swap apart"
    data = tmp_path / "evaluation.npz"
    np.savez(data, **{f"x_{i}": evaluation[name] for i, name in enumerate(order)}, y=targets)
    pre = tmp_path / "preprocessing.json"
    pre.write_text(
        json.dumps(
            {
                "image": {"method": "scale", "scale": PIXEL_SCALE, "channel_order": "bgr"},
                "vector": {"mean": VECTOR_MEAN, "std": VECTOR_STD, "description": "training set"},
            }
        )
    )
    out = tmp_path / "two.bundle"
    extra = ["--evaluation", str(data), "--preprocessing-file", str(pre)]
    run = cli_capture(_argv(tflite_path, signing_keys[0], out, "two-inputs", "classification", *extra))
    assert run.code == 0, run.stderr
    manifest = read_bundle(out).verify(TrustedKeys.from_paths([signing_keys[1]]))
    image, vector = manifest.preprocessing["image"], manifest.preprocessing["vector"]
    assert (image.method, image.channel_order, image.caller_channel_order) == ("scale", "bgr", "rgb")
    assert image.reorders_channels and image.scale == float(np.float32(PIXEL_SCALE))
    assert (
        vector.method == "standardize"
        and vector.offset == VECTOR_MEAN
        and vector.description == "training set"
    )
    assert "image: scale, channels rgb -> bgr" in run.stdout
    assert manifest.validation is not None and manifest.validation.metrics["accuracy"] == 1.0
    # The baseline's input ranges (of the first input, the vector) are the raw values callers send.
    assert order[0] == "vector" and manifest.baseline is not None
    assert abs(manifest.baseline.input_ranges[5].mean - VECTOR_MEAN[5]) < 2.0
    # An agent given raw inputs answers what the runtime answers for the preprocessed ones.
    requests = _raw(5, seed=2)
    for runtime, served in install_on_agent(out, signing_keys[1], tmp_path / "agent").items():
        answer = served.predict([requests[name] for name in order])
        expected = _run_directly(tflite, runtime, _model_inputs(requests))
        np.testing.assert_allclose(answer.tensors[0], expected, atol=1e-5)
        unswapped = _run_directly(tflite, runtime, _model_inputs(requests, swap=False))
        assert np.max(np.abs(answer.tensors[0] - unswapped)) > 1e-3, "the channels were not reordered"


def test_two_input_bundle_refuses_unclear_preprocessing(
    published_folder: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    model = published_folder / "two_inputs.tflite"

    def refused(*extra: str) -> str:
        out = tmp_path / "refused.bundle"
        run = cli_capture(_argv(model, signing_keys[0], out, "two-inputs", "regression", *extra))
        assert run.code == 2 and not out.exists(), run.stdout
        return run.stderr.strip().splitlines()[-1]

    assert "the model has 2 inputs" in refused("--preprocess-scale", "0.5")
    assert "give --preprocessing-file with an entry per input name" in refused("--preprocess-scale", "0.5")
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({"pixels": {"scale": 0.5}}))
    assert "names 'pixels', not an input of the model; its inputs are" in refused(
        "--preprocessing-file", str(pre)
    )
    pre.write_text(json.dumps({"vector": {"method": "standardize"}}))
    assert "there is none here: give the mean and std" in refused("--preprocessing-file", str(pre))
    pre.write_text(json.dumps({"vector": {"mean": [0.0, 1.0], "std": [1.0, 1.0]}}))
    assert "mean has 2 values but the inputs' last axis has 8" in refused("--preprocessing-file", str(pre))


def test_big_float_image_model_without_evaluation_stays_compact(
    published_folder: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """256x256x3 float32: one uniform-noise sample alone was 786 KB; the bound is 10 % of the model."""
    model = published_folder / "image256.tflite"
    out, report = tmp_path / "image256.bundle", tmp_path / "report.json"
    argv = _argv(model, signing_keys[0], out, "image256", "classification", "--report-json", str(report))
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    figures = json.loads(report.read_text())
    model_size = model.stat().st_size
    assert figures["samples_size"] <= samples_limit(model_size)
    assert figures["bundle_size"] <= 1.2 * model_size and figures["bundle_ratio"] <= 1.2
    kept = figures["smoke"]["samples"]
    assert kept >= 2, "compressible random inputs should let more than one sample fit"
    assert f"no --evaluation: the {kept} smoke samples recorded are random model inputs" in run.stdout
    assert f"x the model: model.tflite {model_size:,}" in run.stdout
    assert "warning" not in run.stdout
    assert list(install_on_agent(out, signing_keys[1], tmp_path / "agent")) == [
        info.name for info in installed_runtimes() if info.name in figures["runtimes"]
        and figures["runtimes"][info.name]["loads"]
    ]  # fmt: skip


def test_random_smoke_inputs_are_model_inputs_not_preprocessed_again(
    published_folder: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Without evaluation data the random samples are already model inputs: the recorded
    preprocessing is written to the manifest but not applied to them."""
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({"vector": {"mean": VECTOR_MEAN, "std": VECTOR_STD}}))
    out = tmp_path / "random.bundle"
    argv = _argv(
        published_folder / "two_inputs.tflite", signing_keys[0], out, "two-inputs", "regression",
        "--preprocessing-file", str(pre),
    )  # fmt: skip
    run = cli_capture(argv)
    assert run.code == 0, run.stderr
    bundle = read_bundle(out)
    manifest = bundle.verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert list(manifest.preprocessing) == ["vector"]
    samples = read_samples(bundle.members["samples.npz"])
    assert all(float(a.min()) >= 0.0 and float(a.max()) < 1.0 for a in samples.inputs)
    assert install_on_agent(out, signing_keys[1], tmp_path / "agent")
