"""The ``[capture]`` section of ``agent.toml``: data capture for retraining, off by default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from protocol.capture import CapturePolicy


class CaptureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=False,
        description="Keep a sample of served inputs and outputs and upload them to the fleet for "
        "retraining. A capture policy the fleet sends in the desired state replaces enabled, rate "
        "and the triggers below; the bounds stay these.",
    )
    rate: float = Field(default=0.01, ge=0, le=1, description="Share of served instances kept at random.")
    low_confidence_below: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Classification: also keep every instance whose top-class confidence is under this.",
    )
    out_of_range: bool = Field(
        default=False,
        description="Also keep every instance with an input feature far outside the baseline's range.",
    )
    drift_above: float | None = Field(
        default=None,
        gt=0,
        description="Also keep every instance while the last telemetry window's drift (PSI) is above this.",
    )
    max_disk_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        description="Disk the capture store (state_dir/capture.sqlite) may hold before the oldest "
        "samples are dropped (and counted).",
    )
    max_upload_bytes_per_hour: int = Field(
        default=32 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes sent to the fleet in any hour; beyond, uploads wait and samples stay on disk.",
    )
    batch_size: int = Field(default=100, ge=1, le=1000, description="Samples per upload.")
    upload_interval_s: float = Field(
        default=30, gt=0, description="Seconds between uploads while fewer than batch_size samples wait."
    )

    def policy(self) -> CapturePolicy:
        """The sampling this file asks for (the fleet's policy, when it sends one, replaces it)."""
        return CapturePolicy(
            enabled=self.enabled,
            rate=self.rate,
            low_confidence_below=self.low_confidence_below,
            out_of_range=self.out_of_range,
            drift_above=self.drift_above,
        )
