"""``runtime.run_samples`` on models shaped like published ones, in both runtimes: a fixed batch is
never resized, a dynamic one is resized and restored, every output comes back, and bad arrays or
a failing runtime leave the interpreter ready for the next call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from runtime import (
    InputMismatchError,
    InvokeError,
    ModelLoadError,
    compare_outputs,
    installed_runtimes,
    load_model,
    run_samples,
)
from tests.support.published_models import published_folder

__all__ = ["published_folder"]  # the fixture, imported for pytest

RUNTIMES = [info.name for info in installed_runtimes()]


def _samples(model_inputs: list[tuple[int, ...]], count: int) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(3)
    return [rng.uniform(0, 1, (count, *shape[1:])).astype(np.float32) for shape in model_inputs]


def _one_by_one(
    path: Path, runtime: str, inputs: list[npt.NDArray[np.float32]]
) -> list[npt.NDArray[np.float32]]:
    """The reference: a fresh interpreter, one sample per call."""
    model = load_model(path.read_bytes(), runtime=runtime)  # type: ignore[arg-type]
    parts = [
        run_samples(model, [a[i : i + 1] for a in inputs], dynamic_batch=False) for i in range(len(inputs[0]))
    ]
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", ["detector", "gru_forecaster"])
def test_a_fixed_batch_model_runs_in_chunks_of_its_batch_and_is_never_resized(
    published_folder: Path, runtime: str, name: str
) -> None:
    path = published_folder / f"{name}.tflite"
    model = load_model(path.read_bytes(), runtime=runtime)  # type: ignore[arg-type]
    assert [d.signature[0] for d in model.inputs] == [1]
    inputs = _samples([d.shape for d in model.inputs], 3)
    outputs = run_samples(model, inputs, dynamic_batch=False)
    assert [o.shape[0] for o in outputs] == [3] * len(model.outputs)
    assert all(o.dtype == np.float32 for o in outputs)
    assert compare_outputs(outputs, _one_by_one(path, runtime, inputs), atol=0) is None
    assert model.shapes == [d.shape for d in model.inputs]
    # Told (wrongly) that the batch is dynamic, the runtime refuses the resize and the samples
    # still run at the model's own batch.
    again = run_samples(model, inputs, dynamic_batch=True)
    assert compare_outputs(again, outputs, atol=0) is None and model.shapes == [(1, *inputs[0].shape[1:])]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_dynamic_batch_is_resized_per_chunk_and_restored(published_folder: Path, runtime: str) -> None:
    path = published_folder / "pose.tflite"
    model = load_model(path.read_bytes(), runtime=runtime)  # type: ignore[arg-type]
    inputs = _samples([d.shape for d in model.inputs], 5)
    outputs = run_samples(model, inputs, dynamic_batch=True, max_chunk=2)  # chunks of 2, 2, 1
    assert len(outputs) == 5 and outputs[4].shape == (5, 32, 32)  # the mask, one per instance
    assert compare_outputs(outputs, _one_by_one(path, runtime, inputs), atol=1e-5) is None
    assert model.shapes == [d.shape for d in model.inputs]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_two_inputs_are_taken_in_the_models_order(published_folder: Path, runtime: str) -> None:
    model = load_model((published_folder / "two_inputs.tflite").read_bytes(), runtime=runtime)  # type: ignore[arg-type]
    assert [d.signature_name for d in model.inputs] == ["vector", "image"]
    inputs = _samples([d.shape for d in model.inputs], 3)
    (probabilities,) = run_samples(model, inputs, dynamic_batch=True)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(InputMismatchError, match="same number of samples"):
        run_samples(model, [inputs[0], inputs[1][:2]], dynamic_batch=True)


def test_bad_arrays_are_refused_before_the_interpreter_and_it_keeps_working(published_folder: Path) -> None:
    model = load_model((published_folder / "detector.tflite").read_bytes(), runtime="tflite-runtime")
    good = _samples([model.inputs[0].shape], 1)
    refusals = {
        "takes 1 inputs": [good[0], good[0]],
        "rank 4": [np.zeros((1, 32, 32), np.float32)],
        r"samples of shape \[32, 32, 3\], got \[16, 16, 3\]": [np.zeros((2, 16, 16, 3), np.float32)],
        "takes int8, got <U1": [np.full((1, 32, 32, 3), "a")],
        "do not fit": [np.full((1, 32, 32, 3), 1000, np.int64)],
        "no samples": [np.zeros((0, 32, 32, 3), np.float32)],
    }
    before = run_samples(model, good, dynamic_batch=False)
    for words, arrays in refusals.items():
        with pytest.raises(InputMismatchError, match=words):
            run_samples(model, arrays, dynamic_batch=False)
    assert compare_outputs(run_samples(model, good, dynamic_batch=False), before, atol=0) is None


def test_a_failed_resize_rebuilds_the_interpreter(published_folder: Path) -> None:
    model = load_model((published_folder / "pose.tflite").read_bytes(), runtime="tflite-runtime")
    good = _samples([model.inputs[0].shape], 2)
    before = run_samples(model, good, dynamic_batch=True)
    with model.lock, pytest.raises(InvokeError, match="cannot resize"):
        model.resize([(2, 33, 32, 3)])  # a dimension the model fixes
    assert model.shapes == [(1, 32, 32, 3)]
    assert compare_outputs(run_samples(model, good, dynamic_batch=True), before, atol=0) is None


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_custom_op_is_refused_by_name(published_folder: Path, runtime: str) -> None:
    with pytest.raises(ModelLoadError, match="custom op BesselI1e"):
        load_model((published_folder / "custom_op.tflite").read_bytes(), runtime=runtime)  # type: ignore[arg-type]


def test_compare_outputs_names_the_output_and_the_sample() -> None:
    a = [np.zeros((3, 2), np.float32), np.zeros((3, 4), np.float32)]
    b = [np.zeros((3, 2), np.float32), np.zeros((3, 4), np.float32)]
    assert compare_outputs(a, b, atol=0) is None
    b[1][2, 1] = 0.5
    assert compare_outputs(a, b, atol=0.1) == (
        "output 1 (shape [3, 4]): differs by up to 0.5 (allowed 0.1), worst at sample 2"
    )
    assert compare_outputs(a[:1], b, atol=0.1) == "the model gives 1 outputs, 2 were expected"
    assert "shape [3, 2], expected [2, 2]" in str(compare_outputs(a[:1], [b[0][:2]], atol=0.1))
    nan = [np.full((3, 2), np.nan, np.float32)]
    assert "differs by up to inf" in str(compare_outputs(nan, b[:1], atol=1.0))
