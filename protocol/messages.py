"""Messages between devices and the fleet: status, telemetry, update events, commands, desired state."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, model_validator

from protocol.capture import CapturePolicy
from protocol.errors import MessageError
from protocol.remote import ConfigReport, LogRequest, RemoteConfig
from protocol.rollback import SignedRollbackGrant
from protocol.schema import DeviceId, ModelRef, Sha256Hex, VersionedMessage, WireModel
from protocol.telemetry_wire import expand
from protocol.update_state import UpdateState
from protocol.validation import describe_first_error


class Presence(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class DeviceStatus(VersionedMessage):
    """Retained on ``devices/{id}/status``; the broker publishes the offline form as the last will."""

    kind: Literal["status"] = "status"
    device_id: DeviceId
    presence: Presence
    ts: datetime
    agent_version: str
    runtime: str | None = None
    """The inference runtime in use, e.g. ``tflite-runtime 2.14.0``."""
    model: ModelRef | None = None
    update_state: UpdateState | None = None
    config: ConfigReport | None = None
    """What became of the newest remote config (None: the device never got one)."""


class LatencySummary(WireModel):
    """Latency of the window's requests, in milliseconds, from a histogram."""

    p50: float = Field(ge=0)
    p95: float = Field(ge=0)
    p99: float = Field(ge=0)
    max: float = Field(ge=0)


class ResourceUsage(WireModel):
    cpu_percent: float = Field(ge=0)
    """System-wide CPU use over the window, 0-100 times the number of cores."""
    process_rss_bytes: int = Field(ge=0)
    memory_used_percent: float = Field(ge=0, le=100)
    memory_available_bytes: int = Field(ge=0)
    disk_free_bytes: int | None = Field(default=None, ge=0)
    temperature_c: float | None = None
    """None when the board has no temperature sensor."""


class PredictionHealth(WireModel):
    """How the window's predictions compare with the manifest's baseline."""

    predictions: int = Field(ge=0)
    mean_confidence: float | None = None
    """Classification: mean of the top-class probability."""
    confidence_p05: float | None = None
    """Classification: 5th percentile of the top-class probability."""
    low_confidence_share: float | None = None
    """Share of predictions whose top-class probability is under the agent's threshold."""
    class_counts: list[int] | None = None
    """Classification: predictions per class, in label order."""
    output_histogram_counts: list[int] | None = None
    """Regression/forecast: counts over the manifest baseline's output_histogram edges."""
    drift_psi: float | None = None
    """Population stability index of this window's outputs against the manifest's baseline."""
    out_of_range_share: float | None = None
    """Share of inputs with any feature outside the baseline's per-feature range."""
    nonfinite_inputs: int = 0
    input_drift: float | None = Field(default=None, ge=0)
    """Significance (-log10 p, Bonferroni-corrected) of the strongest test of the first input's
    summary features against the baseline: a mean, a spread or a stuck value. None: no feature
    statistics in the baseline, or too few instances in the window."""
    drift_feature: int | None = Field(default=None, ge=0)
    """The summary feature of that strongest test."""
    stuck_features: int | None = Field(default=None, ge=0)
    """Features constant over the window where the baseline makes that improbable (dead sensors)."""
    output_drift: float | None = Field(default=None, ge=0)
    """Significance (-log10 p) of a chi-square test of the output counts against the baseline's;
    None below five predictions per class (or histogram bin)."""


class TelemetryWindow(VersionedMessage):
    """One window of aggregates on ``devices/{id}/telemetry``, in the full or the compact wire
    form (``protocol.telemetry_wire``); agents send the compact one."""

    kind: Literal["telemetry"] = "telemetry"
    device_id: DeviceId
    seq: int = Field(ge=0)
    """Increases by one per window for the life of the device's state directory."""
    window_start: datetime
    window_end: datetime
    model: ModelRef | None = None
    requests: int = Field(ge=0)
    errors: dict[str, int] = Field(default_factory=dict)
    """Failed requests by kind, e.g. ``bad_request``, ``inference``."""
    latency_ms: LatencySummary | None = None
    """None when the window had no requests."""
    resources: ResourceUsage
    uptime_s: float = Field(ge=0)
    prediction: PredictionHealth | None = None
    dropped_messages: int = Field(default=0, ge=0)
    """Messages the device's outbox dropped since the last window because it was full."""

    @model_validator(mode="before")
    @classmethod
    def _expand_compact(cls, data: object) -> object:
        return expand(data)


class UpdateEvent(VersionedMessage):
    """One transition of the agent's update state machine, on ``devices/{id}/events``."""

    kind: Literal["update"] = "update"
    device_id: DeviceId
    ts: datetime
    update_id: str
    """Identifies one attempt to install one target; shared by all its transitions."""
    state: UpdateState
    """The state entered, e.g. ``download``, ``verify``, ``smoke``, ``activate``, ``commit``."""
    target: ModelRef
    previous: ModelRef | None = None
    ok: bool = True
    reason: str | None = None
    """Why the transition happened when it was not the happy path: the error, in words."""


class CommandKind(StrEnum):
    CHECK_UPDATE = "check-update"
    LOGS = "logs"


class Command(VersionedMessage):
    """Fleet to device, on ``devices/{id}/cmd``."""

    kind: Literal["command"] = "command"
    command: CommandKind
    command_id: str
    issued_at: datetime
    logs: LogRequest | None = None
    """With ``logs``: what part of its log the device should send."""

    @model_validator(mode="after")
    def _logs_with_request(self) -> Command:
        if (self.command == CommandKind.LOGS) != (self.logs is not None):
            raise ValueError("a logs command carries a log request, and only a logs command does")
        return self


class DesiredModel(WireModel):
    """The model a device should run, and where its bundle is."""

    name: str
    version: str
    sha256: Sha256Hex
    """sha256 of the whole bundle file, checked after download."""
    size: int = Field(ge=0)
    url: str
    """Bundle URL; relative URLs are resolved against the fleet's base URL."""


class DesiredState(VersionedMessage):
    """``GET /api/v1/devices/{id}/desired``: the source of truth for what a device should run."""

    kind: Literal["desired"] = "desired"
    device_id: DeviceId
    model: DesiredModel | None = None
    updated_at: datetime | None = None
    rollback_grant: SignedRollbackGrant | None = None
    """The operator's signed permission to move to ``model`` although it is older than the model
    the device runs (``protocol.rollback``); the device refuses such a move without one, except one
    step back to its previous model."""
    config: RemoteConfig | None = None
    """Settings the operator changed from afar (``protocol.remote``); None: agent.toml alone."""
    capture: CapturePolicy | None = None
    """Data capture set by an operator for this device or its group (``protocol.capture``);
    absent: the device's own ``[capture]`` section decides."""


_M = TypeVar("_M", bound=VersionedMessage)


def parse_message(model: type[_M], payload: bytes) -> _M:
    """Parse one JSON payload as ``model``; raise MessageError naming the first problem."""
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        problem = describe_first_error(exc, default="message")
        raise MessageError(f"not a valid {model.__name__}: {problem}") from exc
