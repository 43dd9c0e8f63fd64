"""``samples.npz``: several inputs and outputs in their own dtypes, the legacy ``x``/``y`` form, and
archives that cannot be used are refused by name."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from protocol.bundle import read_samples, write_samples
from protocol.errors import BundleError


def test_inputs_keep_their_dtype_and_outputs_come_back_float32() -> None:
    image = np.arange(2 * 4 * 4 * 3, dtype=np.int8).reshape(2, 4, 4, 3)
    vector = np.linspace(0, 1, 16, dtype=np.float32).reshape(2, 8)
    boxes = np.ones((2, 10, 4), np.float16)
    scores = np.full((2, 10), 0.25, np.float64)  # stored as float32
    samples = read_samples(write_samples([image, vector], [boxes, scores]))
    assert not samples.legacy and samples.count == 2
    assert [a.dtype for a in samples.inputs] == [np.int8, np.float32]
    np.testing.assert_array_equal(samples.inputs[0], image)
    assert [o.dtype for o in samples.outputs] == [np.float32, np.float32]
    np.testing.assert_array_equal(samples.outputs[1], scores.astype(np.float32))


def test_the_legacy_x_y_form_is_read() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((3, 8, 8, 1), np.float64), y=np.ones((3, 10), np.float32))
    samples = read_samples(buffer.getvalue())
    assert samples.legacy and samples.count == 3
    assert samples.inputs[0].dtype == np.float32 and samples.inputs[0].shape == (3, 8, 8, 1)
    assert samples.outputs[0].shape == (3, 10)


def _npz(**arrays: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not a zip", "not a readable .npz"),
        (_npz(input_0=np.zeros((2, 3))), "lacks ['output_0']"),
        (_npz(input_0=np.zeros((2, 3)), input_2=np.zeros((2, 3)), output_0=np.zeros((2, 1))), "input_1"),
        (
            _npz(input_0=np.zeros((2, 3)), output_0=np.zeros((3, 1), np.float32)),
            "different numbers of samples",
        ),
        (_npz(input_0=np.zeros((0, 3)), output_0=np.zeros((0, 1), np.float32)), "no samples"),
        (_npz(input_0=np.zeros((2, 3)), output_0=np.zeros((2, 1), np.int8)), "float32 or float16"),
        (_npz(input_0=np.array(["a", "b"]), output_0=np.zeros((2, 1), np.float32)), "numeric array"),
        (_npz(inputs=np.zeros((2, 3)), output_0=np.zeros((2, 1), np.float32)), "unexpected arrays"),
        (_npz(input_0=np.array(1.0), output_0=np.zeros((1, 1), np.float32)), "batch axis"),
    ],
    ids=["not-npz", "no-output", "gap", "counts", "empty", "int-output", "strings", "unknown-key", "scalar"],
)
def test_unusable_samples_are_refused_by_name(data: bytes, words: str) -> None:
    with pytest.raises(BundleError, match=words.replace("[", r"\[").replace("]", r"\]")):
        read_samples(data)


def test_writing_refuses_what_reading_would() -> None:
    with pytest.raises(BundleError, match="different numbers of samples"):
        write_samples([np.zeros((2, 3), np.float32)], [np.zeros((1, 2), np.float32)])
    with pytest.raises(BundleError, match="lacks"):
        write_samples([], [np.zeros((1, 2), np.float32)])


def test_pickled_objects_are_never_loaded() -> None:
    data = _npz(input_0=np.array([{"evil": 1}], dtype=object), output_0=np.zeros((1, 1), np.float32))
    with pytest.raises(BundleError, match=r"not a readable \.npz"):
        read_samples(data)
