"""A test-side MQTT subscriber that collects messages per topic."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol.telemetry_wire import expand
from tests.support.wait import wait_until


class Watcher:
    def __init__(self, host: str, port: int, topic: str) -> None:
        self.topic = topic
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, m, r, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert subscribed.wait(10), "test subscriber did not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            # Telemetry windows travel in the compact form: tests read them by their schema's names.
            document = cast("dict[str, Any]", expand(json.loads(message.payload)))
            self.messages.append((message.topic, document, bool(message.retain)))

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 15.0
    ) -> dict[str, Any]:
        """The first message (payload) that ``predicate`` accepts, received before or during the wait."""

        def matching() -> dict[str, Any] | None:
            with self._lock:
                return next((payload for _t, payload, _r in self.messages if predicate(payload)), None)

        found = wait_until(matching, f"a matching message on {self.topic}", timeout_s)
        assert found is not None  # wait_until returns only a truthy value
        return found

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
