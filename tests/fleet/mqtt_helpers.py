"""A paho client that plays a device (or an observer) in the tests; every wait is bounded."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol.messages import (
    DeviceStatus,
    LatencySummary,
    Presence,
    ResourceUsage,
    TelemetryWindow,
    UpdateEvent,
)
from protocol.schema import ModelRef
from tests.support.wait import wait_until

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05) -> T:
    """Poll until ``predicate`` returns something truthy; fail with the last value at the deadline."""
    return wait_until(predicate, "the condition", timeout_s, interval_s)


class TestClient:
    """Connect, publish QoS 1 and wait for PUBACK; subscribe and collect messages in a queue."""

    __test__ = False

    def __init__(self, host: str, port: int, client_id: str | None = None) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.connect(host, port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)
        assert info.is_published(), f"publish to {topic} was not acknowledged"

    def subscribe(self, topic: str) -> None:
        result: dict[str, Any] = {}
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: result.setdefault("codes", codes)
        self.client.subscribe(topic, qos=1)
        wait_for(lambda: "codes" in result, 5)

    def next_message(self, timeout_s: float = 5.0) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no MQTT message within {timeout_s}s") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def status(device_id: str, presence: Presence = Presence.ONLINE, model: ModelRef | None = None) -> bytes:
    return (
        DeviceStatus(
            device_id=device_id,
            presence=presence,
            ts=datetime.now(UTC),
            agent_version="0.1.0",
            runtime="tflite-runtime 2.14.0",
            model=model,
        )
        .model_dump_json()
        .encode()
    )


def telemetry(device_id: str, seq: int = 0, p50: float = 2.5, cpu: float = 37.5) -> bytes:
    start = NOW + timedelta(seconds=10 * seq)
    return (
        TelemetryWindow(
            device_id=device_id,
            seq=seq,
            window_start=start,
            window_end=start + timedelta(seconds=10),
            requests=120,
            errors={"bad_request": 1},
            latency_ms=LatencySummary(p50=p50, p95=p50 * 2, p99=p50 * 3, max=p50 * 4),
            resources=ResourceUsage(
                cpu_percent=cpu,
                process_rss_bytes=52_428_800,
                memory_used_percent=41.0,
                memory_available_bytes=1_000_000_000,
                temperature_c=48.5,
            ),
            uptime_s=100.0,
        )
        .model_dump_json()
        .encode()
    )


def update_event(device_id: str, state: str, target: ModelRef, update_id: str = "u1") -> bytes:
    return (
        UpdateEvent(
            device_id=device_id, ts=datetime.now(UTC), update_id=update_id, state=state, target=target
        )
        .model_dump_json()
        .encode()
    )
