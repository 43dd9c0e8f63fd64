"""Read a bundle's tar headers without reading any member's data.

A bundle is a flat tar of a few regular files. Every header is checked here before a byte of
data is read: GNU sparse members (whose data expands far beyond what the archive holds), links,
devices, directories, long-name records, paths, duplicates and members running past the end of
the file are refused by their header. Only ``x`` (per-member pax) records are read, and they are
bounded, so scanning costs a few blocks of memory however large the archive claims to be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

from protocol.errors import BundleError

BLOCK = 512
MAX_PAX_BYTES = 64 * 1024
"""A pax record for one of our short flat names is a few dozen bytes; anything bigger is hostile."""

_REGULAR = (b"0", b"\0")
_KINDS = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"S": "a GNU sparse file",
    b"L": "a GNU long-name record",
    b"K": "a GNU long-link record",
    b"g": "a global pax header",
}


@dataclass(frozen=True)
class MemberSpan:
    """Where one member's data lies in the archive file."""

    name: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class _Header:
    name: str
    size: int
    kind: bytes


def scan_members(
    handle: BinaryIO,
    label: str,
    file_size: int,
    *,
    allowed: frozenset[str],
    small: Mapping[str, int],
    max_bytes: int,
) -> dict[str, MemberSpan]:
    """Every member's span, from the headers alone. ``small`` caps the named members' sizes;
    ``max_bytes`` caps the sum of all sizes. Raise BundleError naming the first problem."""
    members: dict[str, MemberSpan] = {}
    offset = 0
    total = 0
    pax: dict[str, str] = {}
    while True:
        header = _read_header(handle, label, offset, file_size)
        if header is None:
            if pax:
                raise BundleError(f"{label} is truncated or corrupt: a pax record ends the archive")
            return members
        data_at = offset + BLOCK
        if header.kind == b"x":
            if header.size > MAX_PAX_BYTES:
                raise BundleError(f"{label} holds an implausibly large pax record ({header.size} bytes)")
            pax.update(_pax_records(_read_at(handle, label, data_at, header.size), label))
            offset = data_at + _padded(header.size)
            continue
        name = pax.get("GNU.sparse.name") or pax.get("path", header.name)
        size = _pax_size(pax, label) if "size" in pax else header.size
        sparse = any(key.startswith("GNU.sparse") for key in pax)
        pax = {}
        kind = "a GNU sparse file" if sparse else _KINDS.get(header.kind, f"of unknown type {header.kind!r}")
        if sparse or header.kind not in _REGULAR:
            raise BundleError(
                f"{label} member {name!r} is {kind}, not a regular file; bundles hold only regular files"
            )
        if name not in allowed:
            raise BundleError(f"{label} holds an unexpected member {name!r}; bundles are flat")
        if name in members:
            raise BundleError(f"{label} holds {name!r} twice")
        if size > small.get(name, size):
            raise BundleError(f"{label} member {name!r} is implausibly large ({size} bytes)")
        total += size
        if total > max_bytes:
            raise BundleError(f"{label} unpacks to more than the {max_bytes} byte limit")
        span = MemberSpan(name, data_at, size)
        if span.end > file_size:
            raise BundleError(
                f"{label} is truncated: {name} needs bytes up to {span.end} but the file has {file_size}"
            )
        members[name] = span
        offset = data_at + _padded(size)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _read_at(handle: BinaryIO, label: str, offset: int, size: int) -> bytes:
    try:
        handle.seek(offset)
        data = handle.read(size)
    except OSError as exc:
        raise BundleError(f"cannot read {label}: {exc}") from exc
    if len(data) != size:
        raise BundleError(f"{label} is truncated or corrupt: it ends inside a record at byte {offset}")
    return data


def _read_header(handle: BinaryIO, label: str, offset: int, file_size: int) -> _Header | None:
    """The header at ``offset``; None at the end of the archive (zero block or end of file)."""
    if offset >= file_size and offset > 0:
        return None
    if offset + BLOCK > file_size:
        if offset == 0:
            raise BundleError(f"{label} is not a bundle (not a readable tar archive): too short")
        raise BundleError(f"{label} is truncated or corrupt: it ends inside a header at byte {offset}")
    block = _read_at(handle, label, offset, BLOCK)
    if block == bytes(BLOCK):
        if offset == 0:
            raise BundleError(f"{label} is not a bundle (not a readable tar archive): it is empty")
        return None
    stored = _octal(block[148:156])
    computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored != computed:
        if offset == 0:
            raise BundleError(f"{label} is not a bundle (not a readable tar archive): bad header checksum")
        raise BundleError(f"{label} is truncated or corrupt: bad header checksum at byte {offset}")
    name = _text(block[0:100])
    if block[257:263] == b"ustar\0" and (prefix := _text(block[345:500])):  # POSIX, not old GNU
        name = f"{prefix}/{name}"
    if block[124] & 0x80:
        raise BundleError(f"{label} member {name!r} uses a binary size field; bundles never need one")
    size = _octal(block[124:136])
    if size is None:
        raise BundleError(f"{label} is truncated or corrupt: unreadable size in the header at byte {offset}")
    return _Header(name=name, size=size, kind=block[156:157])


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _octal(field: bytes) -> int | None:
    digits = field.replace(b"\0", b" ").strip()
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        return None


def _pax_records(data: bytes, label: str) -> dict[str, str]:
    """``"LEN key=value\\n"`` records (POSIX pax), strictly."""
    records: dict[str, str] = {}
    at = 0
    while at < len(data) and data[at] != 0:
        space = data.find(b" ", at)
        length = int(data[at:space]) if space > at and data[at:space].isdigit() else 0
        record = data[space + 1 : at + length]
        if length <= 0 or at + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise BundleError(f"{label} is truncated or corrupt: a malformed pax record")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", errors="replace")] = value.decode("utf-8", errors="replace")
        at += length
    return records


def _pax_size(pax: dict[str, str], label: str) -> int:
    value = pax["size"]
    if not value.isdigit():
        raise BundleError(f"{label} is truncated or corrupt: a pax size of {value!r}")
    return int(value)
