"""Turn one received (topic, payload) into a record to store, or a dead letter. No I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from protocol.errors import MessageError, TopicError
from protocol.messages import DeviceStatus, TelemetryWindow, UpdateEvent, parse_message
from protocol.schema import SCHEMA_VERSION
from protocol.topics import DeviceChannel, Topics

PAYLOAD_PREFIX_BYTES = 512


class DeadReason(StrEnum):
    OVERSIZE = "oversize"
    MALFORMED_JSON = "malformed-json"
    SCHEMA = "schema"
    SCHEMA_VERSION = "schema-version"
    DEVICE_MISMATCH = "device-id-mismatch"
    BAD_TOPIC = "bad-topic"
    STORE_FAILED = "store-failed"


@dataclass(frozen=True)
class Received:
    """One message as the MQTT thread handed it over."""

    topic: str
    payload: bytes
    received_at: datetime
    mid: int = 0
    qos: int = 0
    generation: int = 0
    """Which connection delivered it: an ack only goes back on the same connection."""


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    reason: DeadReason
    detail: str
    payload_prefix: str
    payload_size: int
    received_at: datetime


@dataclass(frozen=True)
class Decoded:
    message: DeviceStatus | TelemetryWindow | UpdateEvent
    received_at: datetime
    raw: bytes | None = None
    """The validated payload as received: stored as is, not serialized again."""


_CHANNEL_TYPES: dict[DeviceChannel, type[DeviceStatus | TelemetryWindow | UpdateEvent]] = {
    DeviceChannel.STATUS: DeviceStatus,
    DeviceChannel.TELEMETRY: TelemetryWindow,
    DeviceChannel.EVENTS: UpdateEvent,
}


def payload_prefix(payload: bytes) -> str:
    return payload[:PAYLOAD_PREFIX_BYTES].decode("utf-8", errors="replace")


def dead_letter(item: Received, reason: DeadReason, detail: str) -> DeadLetter:
    return DeadLetter(
        topic=item.topic,
        reason=reason,
        detail=detail,
        payload_prefix=payload_prefix(item.payload),
        payload_size=len(item.payload),
        received_at=item.received_at,
    )


def decode(item: Received, topics: Topics, max_payload_bytes: int) -> Decoded | DeadLetter:
    """Validate one device message against its topic; every failure becomes a DeadLetter."""
    if len(item.payload) > max_payload_bytes:
        return dead_letter(
            item, DeadReason.OVERSIZE, f"payload of {len(item.payload)} bytes exceeds {max_payload_bytes}"
        )
    try:
        where = topics.parse_device_topic(item.topic)
    except TopicError as exc:
        return dead_letter(item, DeadReason.BAD_TOPIC, str(exc))
    kind = _CHANNEL_TYPES.get(where.channel)
    if kind is None:
        return dead_letter(
            item, DeadReason.BAD_TOPIC, f"the fleet does not ingest {where.channel.value} messages"
        )
    try:
        message = parse_message(kind, item.payload)
    except MessageError as exc:
        # Only a rejected payload is parsed a second time, to say why (the happy path parses once).
        return _classify(item, exc)
    if message.device_id != where.device_id:
        return dead_letter(
            item,
            DeadReason.DEVICE_MISMATCH,
            f"topic names device {where.device_id!r} but the payload says {message.device_id!r}",
        )
    return Decoded(message=message, received_at=item.received_at, raw=item.payload)


def _classify(item: Received, exc: MessageError) -> DeadLetter:
    try:
        document = json.loads(item.payload)
    except (ValueError, UnicodeDecodeError) as bad:
        return dead_letter(item, DeadReason.MALFORMED_JSON, f"not JSON: {bad}")
    version = document.get("schema_version", SCHEMA_VERSION) if isinstance(document, dict) else None
    if version != SCHEMA_VERSION and version is not None:
        return dead_letter(
            item,
            DeadReason.SCHEMA_VERSION,
            f"schema_version {version!r}; this fleet reads {SCHEMA_VERSION}: upgrade the fleet or the agent",
        )
    return dead_letter(item, DeadReason.SCHEMA, str(exc))
