"""The update policy: the numbers the update machine runs by, one frozen value built from config.

Built once at start-up and again on SIGHUP; the updater swaps the whole value, so an update in
progress finishes under the policy it started with and the next one runs under the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import UpdateConfig
from agent.update.probation import ProbationPolicy


@dataclass(frozen=True)
class DownloadPolicy:
    attempts: int = 5
    """Tries per download; each retry resumes the part file."""
    retry_base_s: float = 1.0
    """First retry delay; doubled per retry (capped at 60 s), with jitter."""

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.retry_base_s < 0:
            raise ValueError(f"a download needs attempts >= 1 and retry_base_s >= 0, not {self}")


@dataclass(frozen=True)
class UpdatePolicy:
    max_state_restarts: int = 3
    """Saves of one state in a row (the process kept dying there) before it fails without acting."""
    download: DownloadPolicy = field(default_factory=DownloadPolicy)
    probation: ProbationPolicy = field(default_factory=ProbationPolicy)
    keep_previous: int = 1
    """Previous models kept in the store at commit: a fleet-directed rollback to one of them is a
    pointer switch, not a download."""

    def __post_init__(self) -> None:
        if self.max_state_restarts < 1:
            raise ValueError(f"max_state_restarts must be at least 1, not {self.max_state_restarts}")
        if self.keep_previous < 0:
            raise ValueError(f"keep_previous must be 0 or more, not {self.keep_previous}")

    @classmethod
    def from_config(cls, update: UpdateConfig) -> UpdatePolicy:
        return cls(
            max_state_restarts=update.max_state_restarts,
            download=DownloadPolicy(attempts=update.download_attempts, retry_base_s=update.retry_base_s),
            probation=ProbationPolicy(
                duration_s=update.probation_s,
                requests=update.probation_requests,
                min_requests=update.probation_min_requests,
                max_error_rate=update.max_error_rate,
                max_latency_factor=update.max_latency_factor,
                min_invokes=update.probation_min_invokes,
                check_interval_s=update.health_check_interval_s,
            ),
            keep_previous=update.keep_previous,
        )
