"""What the fleet API returns: pydantic models shared by the repository, the routers and the CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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


class TelemetrySummary(View):
    window_end: datetime
    requests: int
    errors: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    cpu_percent: float
    process_rss_bytes: int
    memory_used_percent: float
    temperature_c: float | None
    drift_psi: float | None = None
    low_confidence_share: float | None = None


class DeviceView(View):
    device_id: str
    presence: str
    last_seen: datetime
    first_seen: datetime
    agent_version: str | None
    runtime: str | None
    model: ModelVersionRef | None
    desired: ModelVersionRef | None
    update_state: str | None
    telemetry: TelemetrySummary | None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


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
    state: str
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
    name: str
    version: str
    device_id: str | None = Field(None, description="one device, or null for the fleet-wide default")


class DeploymentResult(View):
    name: str
    version: str
    device_id: str | None
    devices_notified: list[str]
    devices_not_notified: list[str] = Field(
        default_factory=list, description="affected devices the check-update command could not be queued for"
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
