"""``.npz`` request bodies read without copying, and ``.npz`` answers written.

``numpy.load`` on an in-memory ``.npz`` copies each member twice and took ~2.7 ms for one
256x256x3 float32 image, five times the model's invoke. ``numpy.savez`` stores members
uncompressed, so their bytes can be viewed in place: this reader parses the zip directory
(``zipfile``) and each ``.npy`` header itself, and returns read-only arrays over the body.
Compressed members (``savez_compressed``) are inflated by ``zipfile``, bounded by the limit.
Object (pickled) arrays, structured dtypes and Fortran order are refused.
"""

from __future__ import annotations

import ast
import io
import math
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import BadInputError

MAX_MEMBERS = 64
_MAGIC = b"\x93NUMPY"
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header, 30 bytes


def read_npz(body: bytes, max_bytes: int) -> dict[str, npt.NDArray[Any]]:
    """Arrays by name (the member name without ``.npy``); ``BadInputError`` naming the problem."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            infos = archive.infolist()
            if not infos or len(infos) > MAX_MEMBERS:
                raise BadInputError(
                    f"the .npz body must hold 1 to {MAX_MEMBERS} arrays, it holds {len(infos)}"
                )
            if sum(info.file_size for info in infos) > max_bytes:
                raise BadInputError(f"the .npz body unpacks to more than the {max_bytes} byte limit")
            view = memoryview(body)
            return {
                info.filename.removesuffix(".npy"): _parse_npy(_member(archive, info, view), info.filename)
                for info in infos
            }
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError, struct.error) as exc:
        raise BadInputError(f"the body is not a readable .npz archive (numpy.savez): {exc}") from exc


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, view: memoryview) -> memoryview:
    if info.compress_type != zipfile.ZIP_STORED:
        return memoryview(archive.read(info))
    header = _LOCAL_HEADER.unpack_from(view, info.header_offset)
    if header[0] != b"PK\x03\x04":
        raise BadInputError(f"the .npz member {info.filename!r} has no local header")
    start = info.header_offset + _LOCAL_HEADER.size + header[9] + header[10]  # name, extra lengths
    if start + info.file_size > len(view):
        raise BadInputError(f"the .npz member {info.filename!r} is truncated")
    return view[start : start + info.file_size]


def _parse_npy(data: memoryview, name: str) -> npt.NDArray[Any]:
    """One ``.npy`` (format 1, 2 or 3) as a read-only array over ``data``."""
    if bytes(data[:6]) != _MAGIC or len(data) < 10:
        raise BadInputError(f"the .npz member {name!r} is not a .npy array")
    major = data[6]
    if major == 1:
        length, offset = struct.unpack_from("<H", data, 8)[0], 10
    elif major in (2, 3):
        length, offset = struct.unpack_from("<I", data, 8)[0], 12
    else:
        raise BadInputError(f"the .npz member {name!r} has .npy format {major}, which is not supported")
    try:
        header = ast.literal_eval(bytes(data[offset : offset + length]).decode("latin-1"))
        dtype = np.dtype(header["descr"]) if isinstance(header["descr"], str) else None
        shape = tuple(int(d) for d in header["shape"])
        fortran = bool(header["fortran_order"])
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError) as exc:
        raise BadInputError(f"the .npz member {name!r} has an unreadable .npy header") from exc
    if dtype is None or dtype.hasobject or dtype.fields is not None or fortran or any(d < 0 for d in shape):
        raise BadInputError(
            f"the .npz member {name!r} must be a plain numeric C-order array (no objects or records)"
        )
    count = math.prod(shape)  # Python integers: a forged shape cannot overflow
    payload = data[offset + length :]
    if len(payload) != count * dtype.itemsize:
        raise BadInputError(
            f"the .npz member {name!r} holds {len(payload)} bytes for shape {list(shape)} of {dtype}"
        )
    return np.frombuffer(payload, dtype=dtype, count=count).reshape(shape)


def write_npz(arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    """An uncompressed ``.npz`` (``numpy.load`` reads it)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
