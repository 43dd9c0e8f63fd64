"""The on-disk outbox: bounded, durable, and drained only by the broker's acknowledgements."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.mqtt_link import MqttLink
from agent.outbox import Outbox
from edgefleet.mosquitto import MosquittoBroker
from protocol.topics import Topics
from tests.support.agent import DEVICE
from tests.support.wait import wait_until

TOPICS = Topics()


def test_outbox_keeps_order_drops_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", limit=5)
    ids = [box.put("t", f"m{i}".encode()) for i in range(8)]
    assert len(box) == 5
    kept = box.after(0, 100)
    assert [m.payload for m in kept] == [b"m3", b"m4", b"m5", b"m6", b"m7"]
    assert [m.id for m in kept] == ids[3:]
    box.close()
    # The drop count and the messages survive a restart; the count is reported once.
    again = Outbox(tmp_path / "outbox.sqlite", limit=5)
    assert len(again) == 5
    assert again.take_dropped() == 3
    assert again.take_dropped() == 0
    again.ack(ids[3])
    assert [m.payload for m in again.after(0, 2)] == [b"m4", b"m5"]
    assert [m.payload for m in again.after(ids[5], 10)] == [b"m6", b"m7"]
    again.close()


def test_a_damaged_outbox_is_set_aside_and_the_agent_carries_on(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path)
    box.put("t", b"m")
    assert len(box) == 1
    box.close()
    assert [p.name.startswith("outbox.sqlite.damaged-") for p in tmp_path.iterdir()].count(True) == 1


class SessionWatcher:
    """A subscriber with a persistent session: it misses nothing while the broker restarts."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"watch-{uuid.uuid4().hex[:8]}",
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, m, r, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(json.loads(message.payload))

    def seqs(self) -> list[int]:
        with self._lock:
            return [int(p["n"]) for p in self.payloads]

    def wait_for_count(self, n: int, timeout_s: float = 30) -> list[int]:
        """Every sequence number received (repeats included) once ``n`` distinct ones have arrived."""
        wait_until(lambda: len(set(self.seqs())) >= n, f"{n} distinct messages", timeout_s)
        return self.seqs()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _link(broker: MosquittoBroker, outbox: Outbox) -> MqttLink:
    return MqttLink(
        DEVICE,
        broker.host,
        broker.port,
        TOPICS,
        agent_version="test",
        status=lambda: (None, None, "idle"),
        on_check_update=lambda: None,
        keepalive_s=5,
        outbox=outbox,
    )


def _deduplicated(seqs: list[int]) -> list[int]:
    """Delivery is at least once: drop repeats, keep first arrival order."""
    seen: set[int] = set()
    return [n for n in seqs if not (n in seen or seen.add(n))]  # type: ignore[func-returns-value]


@pytest.mark.slow
def test_broker_outage_and_agent_restart_lose_nothing_and_keep_order(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    topic = TOPICS.telemetry(DEVICE)
    watcher = SessionWatcher(broker, topic)
    path = tmp_path / "outbox.sqlite"
    link = _link(broker, Outbox(path)).start()
    try:
        assert link.connected.wait(10)
        for n in range(0, 20):
            link.publish(topic, json.dumps({"n": n}).encode(), 1, False)
        # Acknowledged by the broker, so gone from the outbox.
        wait_until(lambda: link.queued == 0, "the outbox to drain")

        broker.stop()
        wait_until(lambda: not link.connected.is_set(), "the link to notice the broker is gone")
        for n in range(20, 70):
            link.publish(topic, json.dumps({"n": n}).encode(), 1, False)
        assert link.queued >= 50 - link.window  # the broker cannot have acknowledged these
    finally:
        link.stop(timeout_s=0.5)  # the agent stops while the broker is still down

    # A new agent process (a new link on the same outbox file), and later the broker comes back.
    relink = _link(broker, Outbox(path))
    assert len(relink.outbox) >= 50 - relink.window
    relink.start()
    try:
        for n in range(70, 80):
            relink.publish(topic, json.dumps({"n": n}).encode(), 1, False)
        time.sleep(0.5)
        broker.start()
        seqs = watcher.wait_for_count(80)
        wait_until(lambda: relink.queued == 0, "the new link's outbox to drain")
    finally:
        relink.stop()
        watcher.close()
    # Messages the first link had handed to paho when the broker died went with that process;
    # the outbox still had them, so they came again: nothing lost, order kept.
    assert _deduplicated(seqs) == list(range(80))
    assert Outbox(path).take_dropped() == 0
