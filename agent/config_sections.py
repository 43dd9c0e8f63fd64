"""The ``[log]`` and ``[remote]`` sections of ``agent.toml`` (kept apart: config.py is near its size)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from protocol.remote import MAX_LOG_BYTES, LogLevel


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: LogLevel | None = Field(
        default=None,
        description="Least level the agent logs (to stderr, i.e. the journal, and to its log file); "
        "unset: info, or debug with -v.",
    )
    file: bool = Field(
        default=True,
        description="Also keep the log in state_dir/log/agent.log (what remote log requests read).",
    )
    max_bytes: int = Field(
        default=1024 * 1024,
        ge=64 * 1024,
        description="Size at which agent.log is rotated; the file and its backups are all the disk "
        "the log takes.",
    )
    backups: int = Field(default=2, ge=1, le=10, description="Rotated files kept (agent.log.1, ...).")


class RemoteAccessConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    accept_config: bool = Field(
        default=True,
        description="Apply the config section of the desired state (the remotely settable keys "
        "override this file's); false: refuse it and report that this device does not accept one.",
    )
    logs: bool = Field(
        default=True, description="Answer the fleet's log requests (redacted, at most max_log_bytes)."
    )
    max_log_bytes: int = Field(
        default=MAX_LOG_BYTES,
        ge=1024,
        le=MAX_LOG_BYTES,
        description="Most log text one answer carries, whatever the request asks (before compression).",
    )
