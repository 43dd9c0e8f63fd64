"""A single HTTP byte range (RFC 9110 section 14), for resumable bundle downloads. No I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeNotSatisfiable(Exception):  # noqa: N818 - named after the HTTP status
    pass


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int
    """Inclusive, as in ``Content-Range``."""

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range to send, or None for the whole body (no header, several ranges, or bad syntax)."""
    if not header:
        return None
    match = _SINGLE.match(header)
    if match is None:
        return None  # multiple ranges or syntax we ignore: answer with the whole body
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # an invalid range-spec: ignored, as RFC 9110 asks
    if start >= size:
        raise RangeNotSatisfiable
    return ByteRange(start, min(end, size - 1))
