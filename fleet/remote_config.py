"""Remote configuration on the fleet: checked with the agent's own types before it is stored.

The fleet lays the settings over a default ``agent.toml`` with ``agent.remote_config.overlay`` (the
function the agent runs on receipt), so an unknown key or a bad value is refused at the API with
the same words the agent would report. The agent checks again against its own file: a value that
passes here and not there (another agent version) is refused by the device and reported.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine

from agent.config import AgentConfig
from agent.remote_config import RemoteConfigError, overlay
from fleet.deploy import Publisher
from fleet.errors import FleetError
from fleet.storage import remote
from protocol.messages import Command, CommandKind
from protocol.remote import ConfigValue, RemoteConfig
from protocol.topics import Topics

_BASELINE = AgentConfig.model_validate(
    {"device_id": "baseline", "fleet": {"url": "http://fleet.invalid"}, "state_dir": "/nonexistent"}
)


class InvalidConfigError(FleetError):
    """A remote config with a key that cannot be set remotely or a value its type refuses (400)."""


def checked(settings: dict[str, dict[str, ConfigValue]]) -> RemoteConfig:
    try:
        overlay(_BASELINE, settings)
    except RemoteConfigError as exc:
        raise InvalidConfigError(f"remote config refused: {exc}") from exc
    return RemoteConfig.of(settings)


def set_config(
    engine: Engine, publisher: Publisher, topics: Topics, target: str, config: RemoteConfig | None
) -> list[str]:
    """Store (None: drop) the config of a device or ``group:<name>``, then ask each affected device
    to read its desired state now; the devices notified."""
    with engine.begin() as conn:
        remote.set_config(conn, target, config)
        if target.startswith(remote.GROUP_PREFIX):
            affected = remote.devices_in_group(conn, target[len(remote.GROUP_PREFIX) :])
        else:
            affected = [target]
    notified = []
    for device in affected:
        command = Command(
            command=CommandKind.CHECK_UPDATE, command_id=uuid.uuid4().hex, issued_at=datetime.now(UTC)
        )
        if publisher.publish(topics.cmd(device), command.model_dump_json().encode(), qos=1):
            notified.append(device)
    return notified
