"""One strict type for each kind of name or value the fleet accepts from outside: every API model,
path parameter and CLI-facing request uses these, never a bare ``str`` and a regex of its own.

Device ids, model names and versions are the wire's own (``protocol.schema``); the fleet adds the
rules only it knows: its reserved names, labels, secrets, free text and database integers.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from protocol.schema import DeviceId, ModelName, SemVer

__all__ = [
    "DB_INT_MAX",
    "RESERVED_PREFIX",
    "DbId",
    "DeviceId",
    "FreeText",
    "Label",
    "ModelName",
    "NewDeviceId",
    "Secret",
    "SemVer",
]

RESERVED_PREFIX = "edgefleet-"
"""Device ids starting with this are refused: the fleet's broker user and client ids use it."""
DB_INT_MAX = 2**63 - 1
"""The largest BIGINT: a larger id cannot exist, so it is refused before any query."""


def _not_reserved(device_id: str) -> str:
    if device_id.lower().startswith(RESERVED_PREFIX):
        raise ValueError(
            f"device id {device_id!r} is reserved: ids starting with {RESERVED_PREFIX!r} belong to the fleet"
        )
    return device_id


NewDeviceId = Annotated[DeviceId, AfterValidator(_not_reserved)]
"""A device id ``device add`` accepts: valid, and not one of the fleet's own names."""
Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
"""A group or tag: 1-64 letters, digits, ``_ . : -``."""
Secret = Annotated[str, StringConstraints(min_length=16, max_length=256, pattern=r"^[\x21-\x7e]+$")]
"""Printable ASCII without spaces: safe as a broker password and as HTTP Basic."""
FreeText = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]
"""One line of prose (a reason): no control characters, which PostgreSQL or a log line would choke on."""
DbId = Annotated[int, Field(ge=1, le=DB_INT_MAX)]
"""A row id: what a BIGINT primary key can hold."""
