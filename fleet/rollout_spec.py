"""What an operator asks for in a rollout (target, waves, gates) and what the API shows. Pure pydantic,
no I/O: storage, the controller and the API all read these types."""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet.compat import RuntimeNote
from fleet.names import DeviceId, FreeText, Label, ModelName, SemVer

DEFAULT_WAVES = ["1", "10%", "50%", "100%"]
_WAVE = re.compile(r"^(\d+(?:\.\d+)?)%$|^(\d+)$")


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    HALTED = "halted"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


ACTIVE_STATES = (RolloutState.RUNNING, RolloutState.PAUSED)


class DeviceRolloutState(StrEnum):
    """Where one targeted device is in a rollout (stored per rollout and device)."""

    PENDING = "pending"
    """Its wave has not started, or it was offline when it did (it gets the model when it returns)."""
    INSTALLING = "installing"
    """Online and told to install; it does not serve the model yet."""
    PROBATION = "probation"
    """It serves the model; its agent has not committed it yet."""
    DONE = "done"
    """Its agent committed the model."""
    FAILED = "failed"
    """Its agent rolled back or refused the install, or it did not install within the timeout."""
    SKIPPED_OFFLINE = "skipped-offline"
    """Still offline at the rollout's deadline: the rollout finished without it."""
    SKIPPED_INCOMPATIBLE = "skipped-incompatible"
    """Its reported runtime cannot load the model: never assigned."""


SETTLED_DEVICE_STATES = frozenset(
    {
        DeviceRolloutState.DONE,
        DeviceRolloutState.FAILED,
        DeviceRolloutState.SKIPPED_OFFLINE,
        DeviceRolloutState.SKIPPED_INCOMPATIBLE,
    }
)
"""A rollout completes when every device is in one of these."""


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(Spec):
    """Which devices: all of them, a group, devices carrying every given tag, or a list of ids."""

    all: bool = Field(False, description="every known device")
    group: Label | None = Field(None, description="devices in this group")
    tags: list[Label] = Field(default_factory=list, description="devices carrying every one of these tags")
    devices: list[DeviceId] = Field(default_factory=list, description="these device ids")

    @model_validator(mode="after")
    def _one_selector(self) -> Target:
        chosen = sum([self.all, self.group is not None, bool(self.tags), bool(self.devices)])
        if chosen != 1:
            raise ValueError("choose exactly one of all, group, tags or devices")
        return self


class Gates(Spec):
    """Health gates judged on each wave's devices after its soak time."""

    soak_s: float = Field(600, ge=0, description="how long each wave runs before it is judged")
    max_latency_p95_ratio: float = Field(
        1.5, gt=0, description="median window p95 latency on the new model / on the previous model"
    )
    max_error_rate: float = Field(0.02, ge=0, le=1, description="failed requests / requests")
    max_drift_psi: float = Field(0.25, ge=0, description="mean drift PSI against the manifest baseline")
    max_low_confidence_share: float = Field(0.3, ge=0, le=1, description="mean low-confidence share")
    max_out_of_range_share: float = Field(
        0.3, ge=0, le=1, description="mean share of inputs outside the baseline's per-feature range"
    )
    drift_significance: float = Field(
        5.0,
        ge=0,
        description="a window whose input or output drift significance (-log10 p) is above this drifted",
    )
    max_drifted_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="share of windows that drifted (above drift_significance, or a stuck feature)",
    )
    max_offline_share: float = Field(0.2, ge=0, le=1, description="share of the wave's devices offline")
    max_rollbacks: int = Field(
        0, ge=0, description="failed devices tolerated (agent rollbacks, refused or timed-out installs)"
    )
    install_timeout_s: float = Field(
        1800,
        gt=0,
        description="a device online and told to install that does not serve the model by then fails",
    )
    min_windows_per_device: int = Field(
        3, ge=1, description="telemetry windows on the new model before a device's figures count"
    )
    min_requests_per_device: int = Field(
        50, ge=0, description="requests on the new model before a device's figures count"
    )
    min_windows_per_wave: int = Field(
        3, ge=1, description="windows of the counted devices together before the gates judge"
    )
    min_requests_per_wave: int = Field(
        100, ge=0, description="requests of the counted devices together before the gates judge"
    )
    max_sample_wait_s: float = Field(
        3600,
        gt=0,
        description="after the soak, how long a wave waits for the minimum sample before it halts",
    )
    on_failure: Literal["rollback", "halt"] = Field(
        "rollback", description="roll the devices back to what they ran, or only stop"
    )


class RolloutRequest(Spec):
    name: ModelName
    version: SemVer
    target: Target
    waves: list[str] = Field(default_factory=lambda: list(DEFAULT_WAVES))
    gates: Gates = Field(default_factory=Gates)
    deadline_s: float = Field(
        86400,
        gt=0,
        description="devices still offline this long after the start are skipped; then it may complete",
    )

    @field_validator("waves")
    @classmethod
    def _waves(cls, waves: list[str]) -> list[str]:
        if not waves:
            raise ValueError("at least one wave")
        for wave in waves:
            match = _WAVE.match(wave.strip())
            if match is None:
                raise ValueError(f"wave {wave!r} is neither a device count (e.g. 1) nor a percentage (10%)")
            if match.group(1) is not None and not 0 < float(match.group(1)) <= 100:
                raise ValueError(f"wave {wave!r} is not a percentage in (0, 100]")
            if match.group(2) is not None and int(match.group(2)) < 1:
                raise ValueError(f"wave {wave!r} must be at least one device")
        return [wave.strip() for wave in waves]


def wave_sizes(waves: list[str], total: int) -> list[int]:
    """Cumulative device counts per wave for ``total`` devices; the last wave always takes them all."""
    sizes: list[int] = []
    for wave in waves:
        count = math.ceil(float(wave[:-1]) / 100 * total) if wave.endswith("%") else int(wave)
        count = max(1, min(count, total))
        if not sizes or count > sizes[-1]:
            sizes.append(count)
    if not sizes or sizes[-1] < total:
        sizes.append(total)
    return sizes


class GateResult(Spec):
    gate: str
    ok: bool
    value: float | None
    limit: float | None
    detail: str


class RolloutView(Spec):
    id: int
    name: str
    version: str
    target: Target
    waves: list[int] = Field(description="cumulative device counts per wave")
    gates: Gates
    state: RolloutState
    wave: int = Field(description="index of the current wave (0-based)")
    wave_started_at: datetime | None
    reason: str | None
    last_gates: list[GateResult] | None
    devices_total: int
    devices_assigned: int
    devices_on_target: int
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    skipped: list[RuntimeNote] = Field(
        default_factory=list, description="targeted devices left out: their runtime cannot load the model"
    )
    deadline_at: datetime | None = Field(None, description="offline devices are skipped from then on")
    device_states: dict[DeviceRolloutState, int] = Field(
        default_factory=dict, description="how many targeted devices are in each state"
    )


class RolloutDeviceView(Spec):
    device_id: str
    wave: int | None = Field(description="0-based wave; null for a device skipped as incompatible")
    state: DeviceRolloutState
    since: datetime | None = Field(description="when it entered this state")
    detail: str | None = Field(description="why (e.g. offline, the agent's rollback reason)")


class RolloutAction(Spec):
    reason: FreeText | None = Field(None, description="why, for the record")


def gate_dicts(results: list[GateResult]) -> list[dict[str, Any]]:
    return [result.model_dump(mode="json") for result in results]
