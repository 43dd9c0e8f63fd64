"""The agent's MQTT connection (paho 2): presence, commands in, events and telemetry out.

Retained ``DeviceStatus`` online on every connect, the offline form as the last will (retained,
QoS 1); automatic reconnects with backoff on paho's network thread. Events and telemetry go
through the on-disk ``Outbox``: ``publish`` stores the message and returns; a sender thread hands
stored messages to paho in order (at most ``window`` unacknowledged at a time) while connected,
and a message leaves the outbox only in ``on_publish``, when the broker's PUBACK arrived. paho
itself re-sends what is in flight after a reconnect; what the outbox drops when full is counted
and reported in telemetry.

With a TLS context the link connects over TLS (the context decides what is trusted and whether a
client certificate is presented); a refused handshake is logged once per distinct cause, in words
(``agent.tls.describe_handshake``), and kept in ``last_error`` until the next successful connect.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.outbox import Outbox
from agent.tls import TlsHandshakeError, describe_handshake, record_handshake_errors
from protocol.errors import MessageError
from protocol.messages import Command, CommandKind, DeviceStatus, Presence, UpdateEvent, parse_message
from protocol.remote import ConfigReport
from protocol.schema import ModelRef
from protocol.topics import Topics

log = logging.getLogger(__name__)


class MqttLink:
    """Implements the telemetry ``Sink`` protocol: ``publish(topic, payload, qos, retain)``."""

    def __init__(  # noqa: PLR0913 - the [mqtt] settings plus the injected transport and clock; built in one place (app)
        self,
        device_id: str,
        host: str,
        port: int,
        topics: Topics,
        *,
        agent_version: str,
        status: Callable[[], tuple[str | None, ModelRef | None, str | None]],
        on_check_update: Callable[[], None],
        on_command: Callable[[Command], None] = lambda command: None,
        config_report: Callable[[], ConfigReport | None] = lambda: None,
        keepalive_s: int = 30,
        outbox: Outbox,
        username: str | None = None,
        password: str | None = None,
        window: int = 20,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.device_id = device_id
        self.host = host
        self.port = port
        self.topics = topics
        self.agent_version = agent_version
        self.status = status
        self.on_check_update = on_check_update
        self.on_command = on_command
        """Every other command (a log request), on paho's network thread: it must not block."""
        self.config_report = config_report
        self.keepalive_s = keepalive_s
        self.outbox = outbox
        self.window = window
        self._in_flight: dict[int, int] = {}
        """paho mid -> outbox id of the messages handed to paho and not yet acknowledged."""
        self._early_acks: set[int] = set()
        self._not_ours: set[int] = set()
        self._sent_up_to = 0
        """Highest outbox id handed to paho by this process (paho re-sends those itself)."""
        self._map_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._sender: threading.Thread | None = None
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
        self._tls_failure: BaseException | None = None
        self.last_error: TlsHandshakeError | None = None
        """Why the last TLS connection attempt failed; None after a successful connect."""
        if tls is not None:
            record_handshake_errors(tls, self._record_tls_failure)
            self._client.tls_set_context(tls)
        self._client.on_connect_fail = self._on_connect_fail
        self._client.will_set(
            self.topics.status(device_id),
            self._status_payload(Presence.OFFLINE, will=True),
            qos=1,
            retain=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> MqttLink:
        """Connect in the background; a broker that is down now is retried with backoff."""
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)
        self._sender.start()
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self._client.loop_start()
        return self

    def flush(self, timeout_s: float) -> bool:
        """Wait (bounded) until the broker acknowledged everything in the outbox."""
        deadline = time.monotonic() + timeout_s
        while len(self.outbox) and time.monotonic() < deadline:
            if not self.connected.is_set():
                return False
            self._wake.set()
            time.sleep(0.02)
        return len(self.outbox) == 0

    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush the outbox (bounded), publish the offline status (retained), disconnect."""
        self.flush(timeout_s)
        self._closing = True
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout_s)
        if self.connected.is_set():
            info = self._publish_direct(
                self.topics.status(self.device_id), self._status_payload(Presence.OFFLINE)
            )
            try:
                info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not confirmed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self.outbox.close()

    # -- the Sink protocol -------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Store the message in the outbox (durable on return); the sender thread delivers it."""
        self.outbox.put(topic, payload, qos, retain)
        self._wake.set()

    def take_dropped(self) -> int:
        """Messages the full outbox dropped since the last call (reported in the next window)."""
        return self.outbox.take_dropped()

    @property
    def queued(self) -> int:
        return len(self.outbox)

    # -- the sender thread -------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._closing:
            self._wake.wait(1.0)
            self._wake.clear()
            if self._closing:
                return
            try:
                self._send_some()
            except Exception:
                log.exception("the MQTT outbox sender failed; retrying")
                time.sleep(1.0)

    def _send_some(self) -> None:
        while self.connected.is_set() and not self._closing:
            with self._map_lock:
                room = self.window - len(self._in_flight)
            if room <= 0:
                return  # on_publish wakes us when the broker acknowledges
            batch = self.outbox.after(self._sent_up_to, room)
            if not batch:
                return
            for message in batch:
                info = self._client.publish(
                    message.topic, message.payload, qos=message.qos, retain=message.retain
                )
                if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    log.warning("paho refused a publish (%s); retrying later", mqtt.error_string(info.rc))
                    return
                # Handed to paho: it keeps it (and re-sends it after a reconnect) until the PUBACK.
                self._sent_up_to = message.id
                if message.qos == 0:
                    self.outbox.ack(message.id)
                else:
                    self._settle(info.mid, message.id)

    def _settle(self, mid: int, outbox_id: int | None) -> None:
        """Record what ``mid`` is, once paho's ``publish`` returned it (its PUBACK may be earlier)."""
        with self._map_lock:
            if mid in self._early_acks:
                self._early_acks.discard(mid)
            elif outbox_id is None:
                self._not_ours.add(mid)
                return
            else:
                self._in_flight[mid] = outbox_id
                return
        if outbox_id is not None:
            self.outbox.ack(outbox_id)

    def _publish_direct(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """The retained status: straight to paho, not through the outbox (only the latest matters)."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        self._settle(info.mid, None)
        return info

    def publish_event(self, event: UpdateEvent) -> None:
        self.publish(self.topics.events(self.device_id), event.model_dump_json().encode(), 1, False)

    def publish_status(self) -> None:
        """Re-publish the retained online status (after the model or update state changed)."""
        if self.connected.is_set():
            self._publish_direct(self.topics.status(self.device_id), self._status_payload(Presence.ONLINE))

    # -- paho callbacks (paho's network thread) ----------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%s refused the connection: %s", self.host, self.port, reason)
            return
        log.info("connected to MQTT broker %s:%s", self.host, self.port)
        self.last_error = None
        self._tls_failure = None
        client.subscribe(self.topics.cmd(self.device_id), qos=1)
        self._publish_direct(self.topics.status(self.device_id), self._status_payload(Presence.ONLINE))
        self.connected.set()
        self._wake.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()
        if self._report_tls_failure():
            return
        if reason.is_failure:
            log.warning("lost the MQTT broker (%s); reconnecting with backoff", reason)

    def _record_tls_failure(self, exc: BaseException) -> None:
        self._tls_failure = exc

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._report_tls_failure()

    def _report_tls_failure(self) -> bool:
        """Log and keep the TLS failure of the last attempt, if it was one (once per cause)."""
        failure, self._tls_failure = self._tls_failure, None
        if failure is None:
            return False
        error = TlsHandshakeError(describe_handshake(failure, f"MQTT broker {self.host}:{self.port}"))
        if self.last_error is None or str(self.last_error) != str(error):
            log.error("%s; retrying with backoff", error)
        self.last_error = error
        return True

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        """The broker acknowledged ``mid`` (PUBACK): only now does the message leave the outbox."""
        with self._map_lock:
            message_id = self._in_flight.pop(mid, None)
            if message_id is None:
                if mid in self._not_ours:
                    self._not_ours.discard(mid)
                else:
                    self._early_acks.add(mid)  # publish() has not returned its mid yet
                return
        self.outbox.ack(message_id)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            command = parse_message(Command, bytes(message.payload))
        except MessageError as exc:
            log.warning("ignoring a command on %s: %s", message.topic, exc)
            return
        if command.command == CommandKind.CHECK_UPDATE:
            log.info("fleet asked for an update check (command %s)", command.command_id)
            self.on_check_update()
            return
        self.on_command(command)

    def _status_payload(self, presence: Presence, will: bool = False) -> bytes:
        """``will``: the last will is fixed at connect, so it carries no config report (an old one
        would overwrite a newer report in the fleet)."""
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
                config=None if will else self.config_report(),
            )
            .model_dump_json()
            .encode()
        )
