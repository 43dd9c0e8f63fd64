"""What the fleet API takes and returns: pydantic models shared by storage, the routers and the CLI."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from fleet.compat import RuntimeNote
from fleet.names import DeviceId, ModelName, SemVer
from fleet.storage.metrics import METRICS
from protocol.remote import ConfigReport
from protocol.update_state import UpdateState


class View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(View):
    name: str
    version: str
    sha256: str = Field(description="sha256 of the whole bundle file")
    size: int
    task: str
    quantization: str
    created_at: datetime = Field(description="when the converter made the bundle (from the manifest)")
    uploaded_at: datetime
    key_id: str = Field(description="id of the operator key that signed the manifest")


class ModelDetail(ModelInfo):
    manifest: dict[str, Any]


class ModelVersionRef(View):
    name: str
    version: str
    sha256: str | None = None


class LatestWindow(View):
    """A device's newest telemetry window: its end, its counters and every metric of
    ``fleet.storage.metrics.METRICS`` as a field of the same name (``TelemetrySummary``)."""

    window_end: datetime
    requests: int
    errors: int

    def value(self, metric: str) -> float | None:
        """One metric by name (the fields beyond the counters are made from the metrics table)."""
        found = getattr(self, metric)
        return None if found is None else float(found)


def _summary_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for metric in METRICS:
        if metric.name in LatestWindow.model_fields:
            continue
        kind: Any = int if metric.integer else float
        fields[metric.name] = (kind | None, None) if metric.nullable else (kind, ...)
    return fields


if TYPE_CHECKING:
    TelemetrySummary = LatestWindow
else:
    TelemetrySummary = create_model(
        "TelemetrySummary", __base__=LatestWindow, __module__=__name__, **_summary_fields()
    )


class DeviceState(StrEnum):
    """A device's identity: provisioned (never seen), active (has reported), revoked."""

    PROVISIONED = "provisioned"
    ACTIVE = "active"
    REVOKED = "revoked"


NEVER_SEEN = "unknown"
"""The ``presence`` of a provisioned device that has not reported yet."""


class DeviceView(View):
    device_id: str
    state: DeviceState = Field(
        DeviceState.ACTIVE, description="provisioned (never seen), active (has reported) or revoked"
    )
    presence: str = Field(description=f"online, offline, or {NEVER_SEEN} before the first status")
    last_seen: datetime | None = Field(description="null until the device first reports")
    first_seen: datetime | None
    agent_version: str | None
    runtime: str | None
    model: ModelVersionRef | None = Field(
        description="what it serves now (its status, or its newest telemetry window after an activation)"
    )
    committed: ModelVersionRef | None = Field(
        None, description="what its agent committed; differs from model while a new one is on probation"
    )
    desired: ModelVersionRef | None
    update_state: UpdateState | None
    telemetry: TelemetrySummary | None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)
    config: ConfigReport | None = Field(
        None, description="the device's report on the newest remote config it saw (applied or refused)"
    )


class TelemetryRow(View):
    id: int
    device_id: str
    seq: int
    window_start: datetime
    window_end: datetime
    received_at: datetime
    payload: dict[str, Any]


class EventRow(View):
    id: int
    device_id: str
    ts: datetime
    received_at: datetime
    update_id: str
    state: UpdateState
    ok: bool
    reason: str | None
    target: ModelVersionRef
    previous: ModelVersionRef | None


class DeadLetterRow(View):
    id: int
    topic: str
    reason: str
    detail: str
    payload_prefix: str
    payload_size: int
    received_at: datetime


class DeploymentRequest(View):
    name: ModelName
    version: SemVer
    device_id: DeviceId | None = Field(None, description="one device, or null for the fleet-wide default")


class DeploymentResult(View):
    name: str
    version: str
    device_id: str | None
    devices_notified: list[str]
    devices_not_notified: list[str] = Field(
        default_factory=list, description="affected devices the check-update command could not be queued for"
    )
    devices_skipped: list[RuntimeNote] = Field(
        default_factory=list, description="devices left out: their reported runtime cannot load the model"
    )
    devices_unchecked: list[RuntimeNote] = Field(
        default_factory=list, description="devices deployed to without a runtime to check (a warning)"
    )


class IngestStats(View):
    connected: bool
    received: int
    stored: int
    duplicates: int
    dead_lettered: dict[str, int]
    queue_depth: int
    acked: int
    manual_ack: bool


class AlertView(View):
    id: int
    rule: str
    device_id: str | None
    severity: str
    message: str
    value: float | None
    opened_at: datetime
    resolved_at: datetime | None


class FleetSummary(View):
    devices: int
    online: int
    offline: int
    models: dict[str, int]
    """``name version`` -> devices running it."""
    open_alerts: int
    active_rollouts: int


class LabelsInUse(View):
    groups: list[str] = Field(description="every group a device is in, sorted")
    tags: list[str] = Field(description="every tag a device has, sorted")
