"""MQTT topic names under a configurable prefix (default ``edgefleet/v1``), and the Home Assistant
discovery topics the fleet publishes under Home Assistant's own prefix (default ``homeassistant``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from protocol.errors import TopicError
from protocol.remote import REQUEST_ID_PATTERN
from protocol.schema import DEVICE_ID_RE

DEFAULT_PREFIX = "edgefleet/v1"
HOMEASSISTANT_PREFIX = "homeassistant"
"""Home Assistant's default MQTT discovery prefix (its ``discovery_prefix`` setting)."""

_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
LOGS = "logs"
"""The level under a device's topic where it answers log requests, one topic per request."""

_SENSOR_KEY_RE = re.compile(r"[a-z0-9_]{1,64}")
"""A discovery topic's object id part: Home Assistant takes ``[a-zA-Z0-9_-]``; ours are metric names."""


class DeviceChannel(StrEnum):
    STATUS = "status"
    TELEMETRY = "telemetry"
    EVENTS = "events"
    CMD = "cmd"


@dataclass(frozen=True)
class DeviceTopic:
    device_id: str
    channel: DeviceChannel


@dataclass(frozen=True)
class Topics:
    """Builds and parses every edgefleet topic for one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        _check_prefix(self.prefix, "topic prefix")

    def device(self, device_id: str, channel: DeviceChannel) -> str:
        if not DEVICE_ID_RE.fullmatch(device_id):
            raise TopicError(f"device id {device_id!r} is not valid (letters, digits, _ . -; at most 64)")
        return f"{self.prefix}/devices/{device_id}/{channel.value}"

    def status(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.STATUS)

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.TELEMETRY)

    def events(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.EVENTS)

    def cmd(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.CMD)

    def logs(self, device_id: str, request_id: str) -> str:
        """Where a device answers one log request: ``devices/{id}/logs/{request_id}``."""
        if not _REQUEST_ID_RE.fullmatch(request_id):
            raise TopicError(f"log request id {request_id!r} is not valid (8-64 letters, digits, _ -)")
        return f"{self.cmd(device_id).rsplit('/', 1)[0]}/{LOGS}/{request_id}"

    @property
    def all_logs(self) -> str:
        """Subscription filter for every device's log answers."""
        return f"{self.prefix}/devices/+/{LOGS}/+"

    def parse_logs_topic(self, topic: str) -> tuple[str, str]:
        """``(device_id, request_id)`` of ``{prefix}/devices/{id}/logs/{request_id}``; TopicError else."""
        head = f"{self.prefix}/devices/"
        parts = topic[len(head) :].split("/") if topic.startswith(head) else []
        if len(parts) != 3 or parts[1] != LOGS:
            raise TopicError(f"topic {topic!r} is not {head}<device-id>/{LOGS}/<request-id>")
        device_id, _, request_id = parts
        if not DEVICE_ID_RE.fullmatch(device_id) or not _REQUEST_ID_RE.fullmatch(request_id):
            raise TopicError(f"topic {topic!r} carries an invalid device id or request id")
        return device_id, request_id

    def all_devices(self, channel: DeviceChannel) -> str:
        """Subscription filter for one channel of every device."""
        return f"{self.prefix}/devices/+/{channel.value}"

    @property
    def fleet_summary(self) -> str:
        return f"{self.prefix}/fleet/summary"

    @property
    def fleet_alerts(self) -> str:
        return f"{self.prefix}/fleet/alerts"

    def device_health(self, device_id: str) -> str:
        return f"{self.prefix}/fleet/devices/{device_id}/health"

    def homeassistant_config(
        self, device_id: str, sensor: str, discovery_prefix: str = HOMEASSISTANT_PREFIX
    ) -> str:
        """Home Assistant's discovery topic for one sensor of one device. It lives under Home
        Assistant's ``discovery_prefix``, not ours; dots in the device id become ``_`` (the node id
        allows only letters, digits, ``_`` and ``-``)."""
        _check_prefix(discovery_prefix, "discovery prefix")
        if not DEVICE_ID_RE.fullmatch(device_id):
            raise TopicError(f"device id {device_id!r} is not valid (letters, digits, _ . -; at most 64)")
        if not _SENSOR_KEY_RE.fullmatch(sensor):
            raise TopicError(
                f"sensor key {sensor!r} is not valid (lower-case letters, digits, _; at most 64)"
            )
        node = device_id.replace(".", "_")
        return f"{discovery_prefix}/sensor/edgefleet_{node}/{sensor}/config"

    def parse_device_topic(self, topic: str) -> DeviceTopic:
        """Split ``{prefix}/devices/{id}/{channel}``; TopicError for anything else."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            raise TopicError(f"topic {topic!r} is not under {head}")
        parts = topic[len(head) :].split("/")
        if len(parts) != 2:
            raise TopicError(f"topic {topic!r} is not {head}<device-id>/<channel>")
        device_id, channel = parts
        if not DEVICE_ID_RE.fullmatch(device_id):
            raise TopicError(f"topic {topic!r} carries an invalid device id {device_id!r}")
        try:
            return DeviceTopic(device_id, DeviceChannel(channel))
        except ValueError as exc:
            raise TopicError(f"topic {topic!r} names an unknown channel {channel!r}") from exc


def _check_prefix(prefix: str, what: str) -> None:
    if not prefix or prefix.startswith("/") or prefix.endswith("/"):
        raise TopicError(f"{what} {prefix!r} must be non-empty without a leading or trailing /")
    if any(c in prefix for c in "#+\0"):
        raise TopicError(f"{what} {prefix!r} must not contain wildcards")
