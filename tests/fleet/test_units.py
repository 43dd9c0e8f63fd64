"""Pure parts without I/O: message decoding and HTTP byte ranges."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleet.api.ranges import ByteRange, RangeNotSatisfiable, parse_range
from fleet.ingest.decode import DeadLetter, DeadReason, Decoded, Received, decode
from protocol.messages import TelemetryWindow
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import status, telemetry

TOPICS = Topics()


def received(topic: str, payload: bytes) -> Received:
    return Received(topic=topic, payload=payload, received_at=datetime.now(UTC))


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("edgefleet/v1/devices/a/telemetry", b"x" * 101, DeadReason.OVERSIZE),
        ("edgefleet/v1/devices/a/telemetry", b"{", DeadReason.MALFORMED_JSON),
        ("edgefleet/v1/devices/a/telemetry", b"\xff\xfe", DeadReason.MALFORMED_JSON),
        ("edgefleet/v1/devices/a/telemetry", b"[]", DeadReason.SCHEMA),
        ("edgefleet/v1/devices/a/telemetry", status("a"), DeadReason.SCHEMA),  # status on the telemetry topic
        ("edgefleet/v1/devices/a/telemetry", telemetry("b"), DeadReason.DEVICE_MISMATCH),
        ("edgefleet/v1/devices/a/cmd", b"{}", DeadReason.BAD_TOPIC),
        ("other/devices/a/telemetry", b"{}", DeadReason.BAD_TOPIC),
    ],
)
def test_decode_dead_letters(topic: str, payload: bytes, reason: DeadReason) -> None:
    result = decode(
        received(topic, payload), TOPICS, max_payload_bytes=100 if reason is DeadReason.OVERSIZE else 10**6
    )
    assert isinstance(result, DeadLetter)
    assert result.reason is reason, result.detail
    assert result.payload_size == len(payload)


def test_decode_valid_telemetry() -> None:
    result = decode(received(TOPICS.telemetry("a"), telemetry("a", seq=3)), TOPICS, 10**6)
    assert isinstance(result, Decoded) and isinstance(result.message, TelemetryWindow)
    assert result.message.seq == 3


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", ByteRange(0, 9)),
        ("bytes=5-", ByteRange(5, 99)),
        ("bytes=90-200", ByteRange(90, 99)),
        ("bytes=-10", ByteRange(90, 99)),
        ("bytes=-500", ByteRange(0, 99)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole body
        ("items=0-1", None),
        ("bytes=9-3", None),  # invalid: ignored
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-160", "bytes=-0"])
def test_unsatisfiable_range(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)
