"""Topics and messages: builders and parsers agree, and bad input is named."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pytest

from protocol.errors import MessageError, TopicError
from protocol.manifest import Quantization, TensorSpec
from protocol.messages import DeviceStatus, Presence, TelemetryWindow, parse_message
from protocol.tensors import dequantize, quantize
from protocol.topics import HOMEASSISTANT_PREFIX, DeviceChannel, Topics


def test_topics_round_trip_and_reject_foreign_topics() -> None:
    topics = Topics("acme/edge")
    assert topics.telemetry("dev-1") == "acme/edge/devices/dev-1/telemetry"
    parsed = topics.parse_device_topic("acme/edge/devices/dev-1/events")
    assert (parsed.device_id, parsed.channel) == ("dev-1", DeviceChannel.EVENTS)
    assert topics.all_devices(DeviceChannel.STATUS) == "acme/edge/devices/+/status"
    for bad in [
        "other/devices/d/status",
        "acme/edge/devices/d/x",
        "acme/edge/devices/a/b/status",
        "acme/edge/devices/bad id/status",
    ]:
        with pytest.raises(TopicError):
            topics.parse_device_topic(bad)
    with pytest.raises(TopicError, match="not valid"):
        topics.cmd("../x")
    with pytest.raises(TopicError, match="wildcards"):
        Topics("a/#")


def test_homeassistant_discovery_topics_live_under_home_assistants_prefix() -> None:
    topics = Topics("acme/edge")  # our prefix does not move Home Assistant's
    assert HOMEASSISTANT_PREFIX == "homeassistant"
    assert topics.homeassistant_config("cam-1", "temperature_c") == (
        "homeassistant/sensor/edgefleet_cam-1/temperature_c/config"
    )
    # Home Assistant's node id takes no dots; its discovery prefix is its own setting.
    assert topics.homeassistant_config("pi.kitchen", "latency_p95", "ha/disc") == (
        "ha/disc/sensor/edgefleet_pi_kitchen/latency_p95/config"
    )
    for device, sensor, prefix, fragment in [
        ("../x", "presence", "homeassistant", "device id '../x' is not valid"),
        ("cam-1", "temp/+", "homeassistant", "sensor key 'temp/+' is not valid"),
        ("cam-1", "presence", "home/#", "discovery prefix 'home/#' must not contain wildcards"),
        ("cam-1", "presence", "/homeassistant", "without a leading or trailing /"),
    ]:
        with pytest.raises(TopicError, match=re.escape(fragment)):
            topics.homeassistant_config(device, sensor, prefix)


def test_messages_carry_a_schema_version_and_parse_back() -> None:
    status = DeviceStatus(device_id="d1", presence=Presence.ONLINE, ts=datetime.now(UTC), agent_version="1")
    payload = status.model_dump_json().encode()
    assert b'"schema_version":1' in payload
    assert parse_message(DeviceStatus, payload) == status


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"{not json", "not a valid TelemetryWindow"),
        (b'{"schema_version": 2}', "schema_version"),
        (b'{"schema_version": 1, "kind": "telemetry", "device_id": "d1"}', "seq"),
    ],
)
def test_bad_messages_name_the_problem(payload: bytes, fragment: str) -> None:
    with pytest.raises(MessageError, match=fragment):
        parse_message(TelemetryWindow, payload)


def test_quantize_and_dequantize_invert_within_one_step() -> None:
    spec = TensorSpec(
        name="x", shape=[1, 3], dtype="int8", quantization=Quantization(scale=0.5, zero_point=-3)
    )
    values = np.array([[-10.0, 0.0, 1000.0]], dtype=np.float32)
    q = quantize(values, spec)
    assert q.dtype == np.int8
    assert q.tolist() == [[-23, -3, 127]]  # clipped at the int8 range
    assert dequantize(q, spec).tolist() == [[-10.0, 0.0, 65.0]]
    float_spec = TensorSpec(name="x", shape=[1, 3], dtype="float32")
    assert quantize(values, float_spec).dtype == np.float32
