"""The ``.npz`` body reader: what ``numpy.savez`` and ``savez_compressed`` write comes back equal,
without a copy where the member is stored; anything else is refused by name."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agent.errors import BadInputError
from agent.npz_codec import read_npz, write_npz

LIMIT = 1 << 20


def _savez(compressed: bool = False, **arrays: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize("compressed", [False, True])
def test_arrays_come_back_equal(compressed: bool) -> None:
    arrays = {
        "image": np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32),
        "tokens": np.arange(12, dtype=np.int32).reshape(3, 4),
        "big_endian": np.arange(4, dtype=">f8"),
        "scalar": np.array(3.5),
    }
    read = read_npz(_savez(compressed, **arrays), LIMIT)
    assert list(read) == list(arrays)
    for name, array in arrays.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        np.testing.assert_array_equal(read[name], array)
    if not compressed:
        assert not read["image"].flags.writeable  # a view of the body, not a copy


def test_what_write_npz_writes_numpy_reads() -> None:
    outputs = {"scores": np.ones((2, 10), np.float32), "boxes": np.zeros((2, 10, 4), np.float32)}
    with np.load(io.BytesIO(write_npz(outputs))) as loaded:
        assert list(loaded.files) == ["scores", "boxes"]
        np.testing.assert_array_equal(loaded["boxes"], outputs["boxes"])


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy(array: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"PK\x03\x04 not really", "not a readable .npz"),
        (_zip({}), "1 to 64 arrays"),
        (_zip({f"a{i}.npy": _npy(np.zeros(1)) for i in range(65)}), "1 to 64 arrays"),
        (_zip({"a.npy": _npy(np.zeros(LIMIT))}), "byte limit"),
        (_zip({"a.npy": b"not numpy"}), "not a .npy array"),
        (_zip({"a.npy": _npy(np.array([{"x": 1}], dtype=object))}), "plain numeric"),
        (_zip({"a.npy": _npy(np.zeros(2, dtype=[("x", "f4"), ("y", "i4")]))}), "plain numeric"),
        (_zip({"a.npy": _npy(np.asfortranarray(np.zeros((2, 3))))}), "plain numeric"),
        (_zip({"a.npy": _npy(np.zeros((2, 3)))[:-8]}), "holds 40 bytes for shape [2, 3]"),
        (_zip({"a.npy": _npy(np.zeros(2)).replace(b"(2,)", b"(9**9,")}), "unreadable .npy header"),
        (_zip({"a.npy": b"\x93NUMPY\x09\x00" + b"\x00" * 8}), "format 9"),
        (_savez(image=np.zeros((2, 3), np.float32))[:-30], "not a readable .npz"),
    ],
    ids=[
        "garbage",
        "empty",
        "too-many",
        "bomb",
        "not-npy",
        "pickle",
        "record",
        "fortran",
        "truncated",
        "header",
        "format",
        "cut-directory",
    ],
)
def test_unusable_bodies_are_refused_by_name(body: bytes, words: str) -> None:
    with pytest.raises(BadInputError) as refused:
        read_npz(body, LIMIT)
    assert words in str(refused.value)
