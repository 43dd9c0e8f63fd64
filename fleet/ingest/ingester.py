"""The MQTT ingester: the network thread only enqueues; a writer validates and stores batches.

The writer is a child process (``fleet.ingest.child``, fed by ``fleet.ingest.relay``) when the
database can be opened from another process and there is a second core: the MQTT thread and the
writer then run side by side instead of taking turns on one interpreter lock. Otherwise (an
in-memory SQLite database, one core, ``writer = "thread"``) it is a thread of this process, and
what each message costs in either thread bounds the rate: the hand-over is a deque and an event
set only when the writer waits.

QoS 1 messages are acknowledged (``manual_ack``) only after the transaction holding them has
committed, so a crash or a database outage loses nothing: the broker redelivers what was not
acknowledged when the persistent session (``clean_start=False``) resumes. Redeliveries are
stored once (unique keys on telemetry windows and update transitions).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import Engine

from fleet.config import MqttSettings
from fleet.ingest.acks import ack_all
from fleet.ingest.answers import PublishAnswers
from fleet.ingest.batch_store import BatchStore
from fleet.ingest.child import ChildConfig, Done
from fleet.ingest.decode import Received, decode
from fleet.ingest.handover import take_batch
from fleet.ingest.relay import ProcessWriter, child_config
from fleet.ingest.routes import Route, attach, subscribe
from fleet.ingest.timing import WriterTimes
from fleet.storage.ingest import DEAD_LETTER_CAP
from fleet.tls import mqtt_client_context
from fleet.views import IngestStats
from protocol.topics import DeviceChannel, Topics

log = logging.getLogger(__name__)

INGESTED_CHANNELS = (DeviceChannel.STATUS, DeviceChannel.TELEMETRY, DeviceChannel.EVENTS)
RECEIVE_MAXIMUM = 1000
"""Unacknowledged QoS 1 messages the broker may have in flight to us: bounds the queue."""


class _QuietShutdown(logging.Filter):
    """paho 2.2 logs "Client is not connected" at ERROR when its loop ends after our own disconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


class Ingester:
    """Subscribe to every device's status, telemetry and events; store them; publish commands."""

    def __init__(
        self,
        settings: MqttSettings,
        engine: Engine,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        dead_letter_cap: int = DEAD_LETTER_CAP,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.dead_letter_cap = dead_letter_cap
        self.topics = Topics(settings.topic_prefix)
        self._clock = clock
        self._pending: deque[Received] = deque()
        self._arrived = threading.Event()
        """Set when a message is queued while the writer may be waiting for one."""
        self._received = 0
        """Counted by the network thread alone (no lock: one writer, and readers take a snapshot)."""
        self._times = WriterTimes()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._connected = threading.Event()
        self._generation = 0
        self._subscribe_mid: int | None = None
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._dead: Counter[str] = Counter()
        self._answers = PublishAnswers(settings.username)
        self.routes: list[Route] = []
        self._batches = BatchStore(engine, dead_letter_cap, self._stop)
        self._child: ChildConfig | str = child_config(engine, settings, dead_letter_cap)
        """The child writer's configuration, or why the writer is a thread."""
        self._relay: ProcessWriter | None = None
        self._relayed = WriterTimes(in_child=True)
        """What child writers of earlier start()s reported."""
        self._client = self._make_client()

    # ------------------------------------------------------------ lifecycle

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=self.settings.manual_ack,
        )
        paho_log = logging.getLogger("fleet.mqtt.paho")
        if not any(isinstance(f, _QuietShutdown) for f in paho_log.filters):
            paho_log.addFilter(_QuietShutdown())
        client.enable_logger(paho_log)
        client.reconnect_delay_set(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, self.settings.password)
        if self.settings.ca_file is not None:  # TLS; TlsSetupError names a bad file
            client.tls_set_context(
                mqtt_client_context(self.settings.ca_file, self.settings.cert_file, self.settings.key_file)
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        attach(client, self.routes, self.settings.manual_ack)
        return client

    def add_route(self, route: Route) -> None:
        """Also take ``route.topic_filter``, for ``route.handler`` (``fleet.ingest.routes``)."""
        self.routes.append(route)
        attach(self._client, [route], self.settings.manual_ack)

    def start(self) -> None:
        """Start the writer (process or thread) and the MQTT network thread (which connects and
        reconnects)."""
        self.start_writer()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()
        log.info("ingester connecting to mqtt://%s:%d as %s", *self._where(), self.settings.client_id)

    def start_writer(self) -> None:
        """Start the writer alone, ahead of ``start()`` (which then leaves it be): a child writer
        takes a second or so to import, which a benchmark of the stream need not time."""
        if self._relay is not None or self._writer is not None:
            return
        self._stop.clear()
        if isinstance(self._child, ChildConfig):
            self._relay = ProcessWriter(self._child, self._pending, self._arrived, self._stop, self._stored)
            self._relay.start()
            log.info("ingest writer: a child process (%s)", self._relay.pid)
        else:
            self._writer = threading.Thread(target=self._write_loop, name="fleet-ingest-writer", daemon=True)
            self._writer.start()
            log.info("ingest writer: a thread (%s)", self._child)

    def _where(self) -> tuple[str, int]:
        return self.settings.host, self.settings.port

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store what is queued (acking it while still connected), then disconnect."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        if self._relay is not None:
            if not self._relay.stop(deadline):
                log.warning(
                    "ingest writer process did not finish within %.0fs; unacked messages will be redelivered",
                    timeout_s,
                )
            self._relayed.add(self._relay.times())
            self._relay = None
        if self._writer is not None:
            self._writer.join(timeout=max(0.0, deadline - time.monotonic()))
            if self._writer.is_alive():
                log.warning(
                    "ingest writer did not finish within %.0fs; unacked messages will be redelivered",
                    timeout_s,
                )
            self._writer = None
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        # A fresh client for a later start(): same id, so the broker resumes the session.
        self._client = self._make_client()

    @property
    def writer(self) -> str:
        """``process`` when a child process decodes and stores, ``thread`` when a thread here does."""
        return "process" if isinstance(self._child, ChildConfig) else "thread"

    @property
    def writer_pid(self) -> int | None:
        """The child writer's process id while it runs (it changes when a dead one is replaced)."""
        return self._relay.pid if self._relay is not None else None

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def generation(self) -> int:
        """Counts connections: a new value means the broker may have lost what was retained."""
        return self._generation

    # ------------------------------------------------------------ MQTT callbacks (network thread)

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        self._generation += 1
        # Retain as published: a retained message keeps its flag even when delivered live, so its
        # dead letter is remembered as retained from the first sighting (and recorded once).
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        # Connected once the broker has the subscription (SUBACK): what is published after
        # wait_connected() returns is delivered.
        _, self._subscribe_mid = client.subscribe(
            [(self.subscription(channel), options) for channel in INGESTED_CHANNELS]
        )
        subscribe(client, self.routes)
        resumed = "resumed" if getattr(flags, "session_present", False) else "new"
        log.info("ingester connected to mqtt://%s:%d (session %s)", *self._where(), resumed)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int, *_rest: Any) -> None:
        if mid == self._subscribe_mid:
            self._connected.set()

    def subscription(self, channel: DeviceChannel) -> str:
        """The filter for one channel; ``$share/<group>/...`` when ingest workers share the stream."""
        topic = self.topics.all_devices(channel)
        group = self.settings.shared_group
        return f"$share/{group}/{topic}" if group else topic

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _properties: Any
    ) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("ingester lost the broker (%s); reconnecting with backoff", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Never touch the database here, and never raise: paho would end its network thread.
        try:
            self._pending.append(
                Received(
                    topic=message.topic,
                    payload=bytes(message.payload),
                    received_at=self._clock(),
                    mid=message.mid,
                    qos=message.qos,
                    generation=self._generation,
                    retain=bool(message.retain),
                    dup=bool(message.dup),
                )
            )
            self._received += 1
            if not self._arrived.is_set():
                self._arrived.set()
        except Exception:
            log.exception("cannot enqueue a message on %r", getattr(message, "_topic", b""))

    # ------------------------------------------------------------ writer thread

    def _write_loop(self) -> None:
        cpu_start = time.thread_time()
        while True:
            waited = time.perf_counter()
            batch = self._take_batch()
            self._times.idle_s += time.perf_counter() - waited
            if not batch:
                if self._stop.is_set():
                    return
                continue
            try:
                self._write(batch)
            except Exception:  # the ingester never dies; unacked messages come back on reconnect
                log.exception("ingest batch of %d messages failed", len(batch))
            self._times.cpu_s = time.thread_time() - cpu_start

    def _take_batch(self) -> list[Received]:
        return take_batch(self._pending, self._arrived, self.settings.batch_size)

    def _write(self, batch: list[Received]) -> None:
        times = self._times
        began, began_cpu = time.perf_counter(), time.thread_time()
        items = [decode(item, self.topics, self.settings.max_payload_bytes) for item in batch]
        decoded, decoded_cpu = time.perf_counter(), time.thread_time()
        stored, duplicates, letters = self._batches.store(batch, items)
        committed = time.perf_counter()
        times.store_cpu_s += time.thread_time() - decoded_cpu
        times.decode_cpu_s += decoded_cpu - began_cpu
        for letter in letters:
            log.warning(
                "dead-lettered a message on %s (%s): %s", letter.topic, letter.reason.value, letter.detail
            )
        self._count(stored, duplicates, [letter.reason.value for letter in letters])
        self._ack(batch)
        times.batches += 1
        times.messages += len(batch)
        times.decode_s += decoded - began
        times.store_s += committed - decoded
        times.ack_s += time.perf_counter() - committed

    def _count(self, stored: int, duplicates: int, reasons: list[str]) -> None:
        with self._lock:
            self._counts["stored"] += stored
            self._counts["duplicates"] += duplicates
            for reason in reasons:
                self._dead[reason] += 1

    def _stored(self, batch: list[Received], done: Done) -> None:
        """A child writer committed ``batch`` (receiver thread): count, log, acknowledge."""
        for topic, reason, detail in done.letters:
            log.warning("dead-lettered a message on %s (%s): %s", topic, reason, detail)
        self._count(done.stored, done.duplicates, [reason for _, reason, _ in done.letters])
        began = time.perf_counter()
        self._ack(batch)
        self._times.ack_s += time.perf_counter() - began

    def _ack(self, batch: list[Received]) -> None:
        if not self.settings.manual_ack:
            return
        generation = self._generation
        # A message from an earlier connection is redelivered by the broker; its mid may now belong
        # to another message, so it is never acknowledged on the new connection.
        mids = [item.mid for item in batch if item.qos == 1 and item.generation == generation]
        ack_all(self._client, mids)
        acked = len(mids)
        for item in batch:
            if item.qos == 2 and item.generation == generation:  # subscribed at QoS 1: not expected
                self._client.ack(item.mid, item.qos)
                acked += 1
        with self._lock:
            self._counts["acked"] += acked

    # ------------------------------------------------------------ commands and stats

    def timings(self) -> WriterTimes:
        """Where the writer's time went since the start (a snapshot; a child writer's as it last
        reported, summed over the children that ended)."""
        if isinstance(self._child, str):
            return self._times.copy()
        times = self._relayed.copy()
        if self._relay is not None:
            times.add(self._relay.times())
        times.ack_s = self._times.ack_s
        return times

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Queue a publish; False (and a log line) when the broker is not connected or refuses it.

        A refusal that arrives later (the broker's PUBACK reason code) is logged and remembered:
        ``refused(topic)`` tells the summary and alert publishers to send that topic again.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("could not publish to %s: %s", topic, mqtt.error_string(info.rc))
            return False
        self._answers.sent(info.mid, topic)
        return True

    def refused(self, topic: str) -> bool:
        """True while the broker's last answer to a publish on ``topic`` was a refusal."""
        return self._answers.refused(topic)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        self._answers.answered(mid, reason)

    def stats(self) -> IngestStats:
        with self._lock:
            return IngestStats(
                connected=self.connected,
                received=self._received,
                stored=self._counts["stored"],
                duplicates=self._counts["duplicates"],
                dead_lettered=dict(self._dead),
                queue_depth=len(self._pending) + (relay.in_flight() if (relay := self._relay) else 0),
                acked=self._counts["acked"],
                manual_ack=self.settings.manual_ack,
            )
