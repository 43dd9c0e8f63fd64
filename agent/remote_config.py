"""Remote configuration: which ``agent.toml`` keys the fleet may set, checking a remote config
with the same pydantic types as the file, and the state of what was applied or refused.

Precedence: a key set remotely overrides the same key of ``agent.toml`` while that remote config
is in effect; every other key comes from the file. ``[remote] accept_config = false`` refuses every
remote config. A refused one changes nothing: the config in effect stays, the refusal and its
reason are reported in the status. The accepted one is kept in ``state_dir/remote_config.json``,
so a restart without the fleet starts with it.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.config import AgentConfig
from agent.errors import ConfigError
from protocol.remote import ConfigOutcome, ConfigReport, ConfigValue, RemoteConfig

log = logging.getLogger(__name__)

REMOTE_KEYS: dict[str, frozenset[str]] = {
    "telemetry": frozenset({"interval_s"}),
    "update": frozenset(
        {
            "probation_s",
            "probation_requests",
            "probation_min_requests",
            "probation_min_invokes",
            "max_error_rate",
            "max_latency_factor",
            "health_check_interval_s",
        }
    ),
    "log": frozenset({"level"}),
}
"""Keys safe to change from afar: none of them can cut the device off the fleet or the broker."""

REMOTE_BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("telemetry", "interval_s"): (1.0, 86_400.0),
    ("update", "probation_s"): (0.0, 86_400.0),
    ("update", "health_check_interval_s"): (0.1, 3_600.0),
}
"""Tighter than agent.toml allows, for values that would flood the broker or stall an update."""

STATE_FILE = "remote_config.json"


class RemoteConfigError(ConfigError):
    """A remote config the agent refuses; the message lists every problem as ``section.key: why``."""


def overlay(local: AgentConfig, settings: dict[str, dict[str, ConfigValue]]) -> AgentConfig:
    """``local`` with ``settings`` laid over it, each section validated by its agent.toml type."""
    problems: list[str] = []
    sections: dict[str, BaseModel] = {}
    for section, values in settings.items():
        allowed = REMOTE_KEYS.get(section)
        if allowed is None:
            settable = ", ".join(f"[{name}]" for name in REMOTE_KEYS)
            problems.append(f"{section}: not a remotely settable section (settable: {settable})")
            continue
        unknown = sorted(set(values) - allowed)
        if unknown:
            problems += [
                f"{section}.{key}: not remotely settable ([{section}] takes {', '.join(sorted(allowed))})"
                for key in unknown
            ]
            continue
        current: BaseModel = getattr(local, section)
        try:
            sections[section] = type(current).model_validate({**current.model_dump(), **values})
        except ValidationError as exc:
            problems += [_describe(section, error) for error in exc.errors()]
            continue
        for key, value in values.items():
            low, high = REMOTE_BOUNDS.get((section, key), (float("-inf"), float("inf")))
            if isinstance(value, int | float) and not low <= value <= high:
                problems.append(
                    f"{section}.{key} = {value!r}: remotely it must be within [{low:g}, {high:g}]"
                )
    if problems:
        raise RemoteConfigError("; ".join(problems))
    return local.model_copy(update=sections)


def _describe(section: str, error: Any) -> str:
    where = ".".join([section, *(str(part) for part in error["loc"])])
    given = error.get("input")
    shown = f" = {given!r}" if isinstance(given, str | int | float | bool) else ""
    return f"{where}{shown}: {error['msg']}"


class RemoteConfigs:
    """The remote config in effect (if any) and the report of the newest one seen."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self.accepted: RemoteConfig | None = None
        self.report: ConfigReport | None = None
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            accepted, report = saved["accepted"], saved["report"]
            self.accepted = RemoteConfig.model_validate(accepted) if accepted else None
            self.report = ConfigReport.model_validate(report) if report else None
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s (%s): starting from agent.toml alone", self.path, exc)

    def effective(self, local: AgentConfig) -> AgentConfig:
        """``local`` with the accepted remote config over it, when it still applies."""
        if self.accepted is None:
            return local
        if not local.remote.accept_config:
            return local
        try:
            return overlay(local, self.accepted.settings)
        except RemoteConfigError as exc:  # agent.toml changed under it
            log.error("the remote config %s no longer applies: %s", self.accepted.revision[:12], exc)
            self._decide(self.accepted.revision, str(exc), None)
            self.accepted = None
            return local

    def offer(self, local: AgentConfig, remote: RemoteConfig | None) -> AgentConfig | None:
        """Judge the desired state's config; the config to run now, or None when nothing changes."""
        if remote is None:
            if self.accepted is None and self.report is None:
                return None
            log.info("the fleet dropped the remote config: back to agent.toml alone")
            self.accepted, self.report = None, None
            self._save()
            return local
        if self.report is not None and self.report.revision == remote.revision:
            return None  # decided already
        kept = self.accepted.revision if self.accepted is not None else None
        if not local.remote.accept_config:
            self._decide(
                remote.revision,
                "this device does not accept a remote config ([remote] accept_config = false)",
                kept,
            )
            return None
        try:
            config = overlay(local, remote.settings)
        except RemoteConfigError as exc:
            log.error("refused remote config %s: %s", remote.revision[:12], exc)
            self._decide(remote.revision, str(exc), kept)
            return None
        self.accepted = remote
        self._decide(remote.revision, None, remote.revision)
        log.info(
            "applied remote config %s: %s", remote.revision[:12], json.dumps(remote.settings, sort_keys=True)
        )
        return config

    def _decide(self, revision: str, reason: str | None, in_effect: str | None) -> None:
        self.report = ConfigReport(
            revision=revision,
            outcome=ConfigOutcome.REFUSED if reason else ConfigOutcome.APPLIED,
            reason=reason[:4000] if reason else None,
            applied_revision=in_effect,
            ts=datetime.now(UTC),
        )
        self._save()

    def _save(self) -> None:
        data = {
            "accepted": self.accepted.model_dump(mode="json") if self.accepted else None,
            "report": self.report.model_dump(mode="json") if self.report else None,
        }
        if data["report"] is None:
            self.path.unlink(missing_ok=True)
            return
        temp = self.path.with_suffix(".tmp")
        try:
            temp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(temp, self.path)
        except OSError as exc:  # the config still applies now; only a restart forgets it
            log.warning("could not save %s: %s", self.path, exc)
