"""Schema versioning and the base class of every wire type."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

SCHEMA_VERSION: Literal[1] = 1
"""Bumped when a wire type changes incompatibly; every message carries it."""

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
"""A device id: 1-64 characters, letters, digits, ``_ . -``; safe in a topic, a path and a URL."""

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)]
"""A model name: lower-case letters, digits, ``_ . -``; safe in a path and a URL."""

SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
SemVer = Annotated[str, StringConstraints(pattern=SEMVER_PATTERN)]
"""A semantic version, e.g. ``1.2.0`` or ``2.0.0-rc.1``."""

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class WireModel(BaseModel):
    """Base of every wire type: immutable, strict about unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionedMessage(WireModel):
    """A top-level message: carries the schema version it was written with."""

    schema_version: Literal[1] = SCHEMA_VERSION


class ModelRef(WireModel):
    """Which model a device runs or should run."""

    name: ModelName
    version: SemVer
    sha256: Sha256Hex | None = None
    """The bundle's sha256, when known: the one identity that cannot be reused by mistake."""
