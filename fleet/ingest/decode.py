"""Turn one received (topic, payload) into a record to store, or a dead letter. No I/O.

Each message is judged on its own, and nothing in a payload can make this raise: size and nesting
depth are bounded before any parser sees the bytes, and a valid message whose values would not fit
their columns is refused here rather than failing the batch it arrived in.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import NamedTuple

from fleet.storage.fit import unfit, window_problem
from fleet.storage.records import DeadLetter, DeadReason, Decoded
from fleet.storage.window_rows import window_values
from protocol.errors import MessageError, TopicError
from protocol.messages import DeviceStatus, TelemetryWindow, UpdateEvent, parse_message
from protocol.schema import SCHEMA_VERSION
from protocol.telemetry_wire import encode_full, is_compact_payload
from protocol.topics import DeviceChannel, Topics

__all__ = ["DeadLetter", "DeadReason", "Decoded", "Received", "dead_letter", "decode"]

PAYLOAD_PREFIX_BYTES = 512
MAX_DEPTH = 32
"""Deepest JSON nesting accepted; the messages themselves nest four levels at most."""
_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class Received(NamedTuple):
    """One message as the MQTT thread handed it over (a named tuple: built per message on the
    network thread, a third of a frozen dataclass's cost)."""

    topic: str
    payload: bytes
    received_at: datetime
    mid: int = 0
    qos: int = 0
    generation: int = 0
    """Which connection delivered it: an ack only goes back on the same connection."""
    retain: bool = False
    """Delivered from the broker's retained store (again at every subscribe)."""
    dup: bool = False
    """Resent by the broker: an earlier delivery was not acknowledged (the fleet died first)."""


_CHANNEL_TYPES: dict[DeviceChannel, type[DeviceStatus | TelemetryWindow | UpdateEvent]] = {
    DeviceChannel.STATUS: DeviceStatus,
    DeviceChannel.TELEMETRY: TelemetryWindow,
    DeviceChannel.EVENTS: UpdateEvent,
}


def printable(text: str) -> str:
    """``text`` without NUL characters, which PostgreSQL's text columns refuse."""
    return text.replace("\x00", "\ufffd")


def payload_prefix(payload: bytes) -> str:
    return printable(payload[:PAYLOAD_PREFIX_BYTES].decode("utf-8", errors="replace"))


def dead_letter(item: Received, reason: DeadReason, detail: str) -> DeadLetter:
    digest = hashlib.sha256(item.topic.encode() + b"\0" + item.payload).hexdigest()
    return DeadLetter(
        topic=printable(item.topic),
        reason=reason,
        detail=printable(detail),
        payload_prefix=payload_prefix(item.payload),
        payload_size=len(item.payload),
        received_at=item.received_at,
        digest=digest,
        redelivered=item.retain or item.dup,
    )


def too_deep(payload: bytes, limit: int) -> bool:
    """True when ``payload`` nests arrays and objects deeper than ``limit`` (brackets inside strings
    do not count). Scans at C speed; the Python loop only runs for payloads with many brackets and
    stops at the first level past the limit."""
    if len(payload.translate(None, _BRACKETS)) <= limit:
        return False  # fewer brackets than levels allowed
    depth = 0
    for char in _JSON_STRING.sub(b"", payload).translate(None, _BRACKETS):
        depth += 1 if char in b"[{" else -1
        if depth > limit:
            return True
    return False


def has_non_json_numbers(payload: bytes) -> bool:
    """True when ``payload`` holds NaN or Infinity outside its strings."""
    if b"NaN" not in payload and b"Infinity" not in payload:
        return False
    bare = _JSON_STRING.sub(b'""', payload)
    return b"NaN" in bare or b"Infinity" in bare


def decode(item: Received, topics: Topics, max_payload_bytes: int) -> Decoded | DeadLetter:
    """Validate one device message against its topic; every failure becomes a DeadLetter."""
    try:
        return _decode(item, topics, max_payload_bytes)
    except Exception as exc:  # a payload must never take the batch down with it
        return dead_letter(item, DeadReason.SCHEMA, f"cannot be read: {exc.__class__.__name__}: {exc}"[:500])


def _message_type(
    item: Received, topics: Topics, max_payload_bytes: int
) -> tuple[type[DeviceStatus | TelemetryWindow | UpdateEvent], str] | DeadLetter:
    """What the topic says the payload is, and which device sent it, once its size and depth are
    known to be sane."""
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
    if too_deep(item.payload, MAX_DEPTH):
        return dead_letter(item, DeadReason.TOO_DEEP, f"JSON nested deeper than {MAX_DEPTH} levels")
    if has_non_json_numbers(item.payload):
        # The parser accepts them, but they are not JSON (RFC 8259) and PostgreSQL refuses them.
        return dead_letter(item, DeadReason.MALFORMED_JSON, "NaN and Infinity are not JSON numbers")
    return kind, where.device_id


def _decode(item: Received, topics: Topics, max_payload_bytes: int) -> Decoded | DeadLetter:
    judged = _message_type(item, topics, max_payload_bytes)
    if isinstance(judged, DeadLetter):
        return judged
    kind, topic_device = judged
    try:
        message = parse_message(kind, item.payload)
    except MessageError as exc:
        # Only a rejected payload is parsed a second time, to say why (the happy path parses once).
        return _classify(item, exc)
    if message.device_id != topic_device:
        return dead_letter(
            item,
            DeadReason.DEVICE_MISMATCH,
            f"topic names device {topic_device!r} but the payload says {message.device_id!r}",
        )
    if not isinstance(message, TelemetryWindow):
        problem = unfit(message)
        if problem is not None:
            return dead_letter(item, DeadReason.OUT_OF_RANGE, problem)
        return Decoded(message=message, received_at=item.received_at, raw=item.payload)
    return _window(item, message)


def _window(item: Received, message: TelemetryWindow) -> Decoded | DeadLetter:
    """A valid window with its row, built once here and checked against the columns."""
    raw = item.payload
    if is_compact_payload(raw):
        # Stored in the full form, as windows always were: readers of the stored payload (the
        # telemetry API) see one form whichever the device sent.
        raw = encode_full(message)
    values = window_values(message, item.received_at, raw)
    problem = window_problem(values)
    if problem is not None:
        return dead_letter(item, DeadReason.OUT_OF_RANGE, problem)
    return Decoded(message=message, received_at=item.received_at, raw=raw, values=values)


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
