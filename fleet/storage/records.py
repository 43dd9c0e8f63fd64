"""What storage takes and gives besides the API views: plain records, no I/O.

They live here, at the bottom of the fleet, so that storage never imports the layers above it
(ingest, rollouts, alerts), which build these records and read them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from fleet.views import ModelInfo
from protocol.messages import DeviceStatus, TelemetryWindow, UpdateEvent


class DeadReason(StrEnum):
    OVERSIZE = "oversize"
    TOO_DEEP = "too-deep"
    MALFORMED_JSON = "malformed-json"
    SCHEMA = "schema"
    SCHEMA_VERSION = "schema-version"
    OUT_OF_RANGE = "out-of-range"
    DEVICE_MISMATCH = "device-id-mismatch"
    BAD_TOPIC = "bad-topic"
    STORE_FAILED = "store-failed"
    REVOKED = "revoked"


@dataclass(frozen=True)
class DeadLetter:
    """A device message the fleet could not accept, kept with its reason (and acknowledged)."""

    topic: str
    reason: DeadReason
    detail: str
    payload_prefix: str
    payload_size: int
    received_at: datetime
    digest: str = ""
    """sha256 of topic and payload: a message delivered again is recognised by it."""
    redelivered: bool = False
    """Retained (handed over again at every subscribe) or resent (DUP: the fleet died before its ack):
    recorded only when no dead letter with the same digest exists."""


class Decoded(NamedTuple):
    """A valid device message, ready to store (a named tuple: one per message, built at a third of
    a frozen dataclass's cost)."""

    message: DeviceStatus | TelemetryWindow | UpdateEvent
    received_at: datetime
    raw: bytes | None = None
    """The validated payload as received: stored as is, not serialized again."""
    values: tuple[Any, ...] | None = None
    """A telemetry window's row (``window_rows.window_values``), built and checked when decoded."""


@dataclass(frozen=True)
class NewModel:
    name: str
    version: str
    sha256: str
    size: int
    task: str
    quantization: str
    key_id: str
    created_at: datetime
    path: str
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Assignment:
    """The model a device should run, resolved: per-device row first, else the fleet default."""

    model: ModelInfo
    updated_at: datetime
    target: str


@dataclass(frozen=True)
class WindowFigures:
    """One telemetry window's figures, as a rollout's gates read them."""

    requests: int
    errors: int
    latency_p95: float | None
    drift_psi: float | None
    low_confidence_share: float | None
    out_of_range_share: float | None = None
    input_drift: float | None = None
    output_drift: float | None = None
    stuck_features: int | None = None


@dataclass(frozen=True)
class Finding:
    """An alert rule that holds for a device now."""

    rule: str
    device_id: str
    severity: str
    message: str
    value: float | None


@dataclass(frozen=True)
class FailedUpdate:
    """An agent's report that an install did not take (a rollback or a failure)."""

    device_id: str
    state: str
    reason: str | None
    target_version: str
