"""Remote logs and remote configuration on the wire.

A log request travels in a ``Command`` (kind ``logs``) on the device's ``cmd`` topic; the agent
answers on ``devices/{id}/logs/{request_id}`` with one or more ``LogChunk`` messages: the redacted
log text, zlib-compressed once and cut into pieces of at most ``LOG_CHUNK_BYTES``.

Remote configuration rides in the desired state (``RemoteConfig``): settings by section and key,
the subset of ``agent.toml`` an operator may change from afar. The wire checks only the shape;
which keys and values are accepted is the agent's decision (its own config types), reported back
in its status as a ``ConfigReport``, so a desired state with a config the agent refuses still
parses and still updates the model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from protocol.schema import DeviceId, Sha256Hex, VersionedMessage, WireModel

REQUEST_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
"""A log request's id: safe as the last level of a topic (no wildcards, no /)."""

MAX_LOG_LINES = 10_000
MAX_LOG_BYTES = 1024 * 1024
"""Most log text (before compression) one answer may carry; the agent caps it lower if told to."""
LOG_CHUNK_BYTES = 32 * 1024
"""Compressed bytes per chunk: well under any broker's message limit."""
MAX_LOG_CHUNKS = 64
"""A compressed answer never exceeds the uncompressed cap, so 32 chunks suffice; twice that is the
bound a collector accepts."""


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def number(self) -> int:
        return {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}[self.value]


class LogRequest(WireModel):
    """What part of its log a device should send: the last ``lines`` lines at ``level`` or above,
    written at or after ``since`` (when given), at most ``max_bytes`` of text."""

    request_id: RequestId
    lines: int = Field(default=200, ge=1, le=MAX_LOG_LINES)
    level: LogLevel = LogLevel.INFO
    since: datetime | None = None
    max_bytes: int = Field(default=256 * 1024, ge=1024, le=MAX_LOG_BYTES)


class LogChunk(VersionedMessage):
    """One piece of a device's answer to a ``LogRequest``, on ``devices/{id}/logs/{request_id}``."""

    kind: Literal["log-chunk"] = "log-chunk"
    device_id: DeviceId
    request_id: RequestId
    seq: int = Field(ge=0, lt=MAX_LOG_CHUNKS)
    total: int = Field(ge=1, le=MAX_LOG_CHUNKS)
    data: str = Field(max_length=(LOG_CHUNK_BYTES + 2) // 3 * 4)
    """Piece ``seq`` of the zlib stream of the whole answer's UTF-8 text, base64."""
    lines: int = Field(ge=0)
    """Lines in the whole answer."""
    truncated: bool = False
    """More lines matched than fit in ``max_bytes``: the oldest were left out."""
    error: str | None = Field(default=None, max_length=1000)
    """Why the device could not answer (then there is one empty chunk)."""

    @model_validator(mode="after")
    def _seq_in_total(self) -> LogChunk:
        if self.seq >= self.total:
            raise ValueError(f"chunk {self.seq} of {self.total}: seq must be below total")
        try:
            base64.b64decode(self.data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"data is not base64: {exc}") from exc
        return self

    @property
    def piece(self) -> bytes:
        return base64.b64decode(self.data)

    @staticmethod
    def encode(piece: bytes) -> str:
        return base64.b64encode(piece).decode("ascii")


ConfigValue = bool | int | float | Annotated[str, StringConstraints(max_length=256)]
MAX_CONFIG_SECTIONS = 16
MAX_CONFIG_KEYS = 32
ConfigName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


def config_revision(settings: dict[str, dict[str, ConfigValue]]) -> str:
    """The sha256 of the settings' canonical JSON: the same settings always name the same revision."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class RemoteConfig(WireModel):
    """Settings an operator set from afar, by ``agent.toml`` section and key, e.g.
    ``{"telemetry": {"interval_s": 30}}``."""

    settings: dict[ConfigName, dict[ConfigName, ConfigValue]] = Field(max_length=MAX_CONFIG_SECTIONS)
    revision: Sha256Hex
    """``config_revision(settings)``: what the device reports back as applied or refused."""

    @model_validator(mode="after")
    def _revision_matches(self) -> RemoteConfig:
        for section, keys in self.settings.items():
            if len(keys) > MAX_CONFIG_KEYS:
                raise ValueError(f"[{section}] has {len(keys)} keys; at most {MAX_CONFIG_KEYS}")
        if config_revision(self.settings) != self.revision:
            raise ValueError("revision is not the sha256 of the settings")
        return self

    @classmethod
    def of(cls, settings: dict[str, dict[str, ConfigValue]]) -> RemoteConfig:
        return cls(settings=settings, revision=config_revision(settings))


class ConfigOutcome(StrEnum):
    APPLIED = "applied"
    REFUSED = "refused"


class ConfigReport(WireModel):
    """The device's answer to the newest remote config it saw, in its status."""

    revision: Sha256Hex
    """The remote config this is about."""
    outcome: ConfigOutcome
    reason: str | None = Field(default=None, max_length=4000)
    """Why it was refused, in words (each problem as ``section.key: what is wrong``)."""
    applied_revision: Sha256Hex | None = None
    """The remote config in effect now (after a refusal: the one kept); None: agent.toml alone."""
    ts: datetime
