"""The agent's MQTT connection (paho 2): presence, commands in, events and telemetry out.

Retained ``DeviceStatus`` online on every connect, the offline form as the last will (retained,
QoS 1); automatic reconnects with backoff on paho's network thread. While the broker is out of
reach, messages wait in a bounded in-memory queue (the on-disk outbox is a later issue); what
the queue drops is counted and reported in telemetry.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from protocol.errors import MessageError
from protocol.messages import Command, CommandKind, DeviceStatus, Presence, UpdateEvent, parse_message
from protocol.schema import ModelRef
from protocol.topics import Topics

log = logging.getLogger(__name__)


class MqttLink:
    """Implements the telemetry ``Sink`` protocol: ``publish(topic, payload, qos, retain)``."""

    def __init__(
        self,
        device_id: str,
        host: str,
        port: int,
        topics: Topics,
        *,
        agent_version: str,
        status: Callable[[], tuple[str | None, ModelRef | None, str | None]],
        on_check_update: Callable[[], None],
        keepalive_s: int = 30,
        username: str | None = None,
        password: str | None = None,
        queue_limit: int = 1000,
    ) -> None:
        self.device_id = device_id
        self.host = host
        self.port = port
        self.topics = topics
        self.agent_version = agent_version
        self.status = status
        self.on_check_update = on_check_update
        self.keepalive_s = keepalive_s
        self._queue: deque[tuple[str, bytes, int, bool]] = deque()
        self._queue_limit = queue_limit
        self._dropped = 0
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            clean_session=False,  # QoS 1 commands sent while we were away are delivered on reconnect
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=60)
        self._client.will_set(
            self.topics.status(device_id), self._status_payload(Presence.OFFLINE), qos=1, retain=True
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> MqttLink:
        """Connect in the background; a broker that is down now is retried with backoff."""
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self._client.loop_start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish the offline status (retained), then disconnect cleanly."""
        if self.connected.is_set():
            info = self._client.publish(
                self.topics.status(self.device_id), self._status_payload(Presence.OFFLINE), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not confirmed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    # -- the Sink protocol -------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        with self._lock:
            if self.connected.is_set():
                info = self._client.publish(topic, payload, qos=qos, retain=retain)
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    return
            self._enqueue((topic, payload, qos, retain))

    def _enqueue(self, item: tuple[str, bytes, int, bool]) -> None:
        if len(self._queue) >= self._queue_limit:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append(item)

    def take_dropped(self) -> int:
        """Messages dropped since the last call (reported in the next telemetry window)."""
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        return dropped

    @property
    def queued(self) -> int:
        return len(self._queue)

    def publish_event(self, event: UpdateEvent) -> None:
        self.publish(self.topics.events(self.device_id), event.model_dump_json().encode(), 1, False)

    def publish_status(self) -> None:
        """Re-publish the retained online status (after the model or update state changed)."""
        if self.connected.is_set():
            self._client.publish(
                self.topics.status(self.device_id), self._status_payload(Presence.ONLINE), qos=1, retain=True
            )

    # -- paho callbacks (paho's network thread) ----------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%s refused the connection: %s", self.host, self.port, reason)
            return
        log.info("connected to MQTT broker %s:%s", self.host, self.port)
        client.subscribe(self.topics.cmd(self.device_id), qos=1)
        client.publish(
            self.topics.status(self.device_id), self._status_payload(Presence.ONLINE), qos=1, retain=True
        )
        with self._lock:
            self.connected.set()
            while self._queue:
                topic, payload, qos, retain = self._queue[0]
                if client.publish(topic, payload, qos=qos, retain=retain).rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                self._queue.popleft()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()
        if reason.is_failure:
            log.warning("lost the MQTT broker (%s); reconnecting with backoff", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            command = parse_message(Command, bytes(message.payload))
        except MessageError as exc:
            log.warning("ignoring a command on %s: %s", message.topic, exc)
            return
        if command.command == CommandKind.CHECK_UPDATE:
            log.info("fleet asked for an update check (command %s)", command.command_id)
            self.on_check_update()

    def _status_payload(self, presence: Presence) -> bytes:
        runtime, model, update_state = self.status()
        return (
            DeviceStatus(
                device_id=self.device_id,
                presence=presence,
                ts=datetime.now(UTC),
                agent_version=self.agent_version,
                runtime=runtime,
                model=model,
                update_state=update_state,
            )
            .model_dump_json()
            .encode()
        )
