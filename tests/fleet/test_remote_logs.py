"""The fleet's side of remote logs over a real broker: the request goes out on the device's cmd
topic; the chunked answer is put together (out of order, duplicates once) and served; hostile
chunks (not JSON, another device's, nobody's request, a decompression bomb) are dropped and the
ingest goes on."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import requests
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine

from edgefleet.mosquitto import MosquittoBroker
from fleet.auth import hash_secret
from fleet.config import MqttSettings
from fleet.provision import FLEET_BROKER_USER, acl_text
from fleet.remote_logs import LogCollector
from protocol.messages import Command, CommandKind, parse_message
from protocol.remote import MAX_LOG_BYTES, LogChunk
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import TestClient, status
from tests.support.fleet import RunningFleet, fleet_config, running_fleet, shipped_listener_settings
from tests.support.wait import wait_until

TOPICS = Topics()
FLEET_PASSWORD = "fleet-password-0123456789"


def chunk(device: str, request_id: str, seq: int, total: int, piece: bytes, lines: int = 0) -> bytes:
    return (
        LogChunk(
            device_id=device,
            request_id=request_id,
            seq=seq,
            total=total,
            data=LogChunk.encode(piece),
            lines=lines,
        )
        .model_dump_json()
        .encode()
    )


def login(broker: MosquittoBroker, user: str, password: str) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5
    )
    client.username_pw_set(user, password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    wait_until(client.is_connected, f"{user} logged in", 5, 0.05)
    return client


def send(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(5)


def ask(fleet: RunningFleet, device: str, **body: Any) -> str:
    response = fleet.post(f"/api/v1/devices/{device}/logs", json=body)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


def answer(fleet: RunningFleet, device: str, request_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found: dict[str, Any] = fleet.json(f"/api/v1/devices/{device}/logs/{request_id}")
        return None if found["state"] == "pending" else found

    return wait_until(done, f"log answer {request_id}", 10, 0.05)


def test_a_chunked_answer_is_assembled_and_hostile_chunks_are_dropped(
    fleet: RunningFleet, device: TestClient, broker: MosquittoBroker
) -> None:
    listener = TestClient(broker.host, broker.port)  # receives what the device would
    listener.subscribe(TOPICS.cmd("pi-1"))
    for name in ("pi-1", "pi-2"):
        device.publish(TOPICS.status(name), status(name))
    wait_until(lambda: len(fleet.json("/api/v1/devices")) == 2, "both devices stored", 10, 0.05)

    unknown = requests.post(f"{fleet.url}/api/v1/devices/ghost/logs", json={}, timeout=5)
    assert unknown.status_code == 404
    assert (
        requests.post(f"{fleet.url}/api/v1/devices/pi-1/logs", json={"lines": 0}, timeout=5).status_code
        == 422
    )

    request_id = ask(fleet, "pi-1", lines=50, level="warning")
    command = parse_message(Command, listener.next_message().payload)
    assert command.command == CommandKind.LOGS and command.logs is not None
    assert (command.logs.request_id, command.logs.lines, command.logs.level) == (request_id, 50, "warning")

    text = "".join(f"2026-01-01T00:00:{i % 60:02d}.000Z WARNING agent: line {i}\n" for i in range(2000))
    packed = zlib.compress(text.encode())
    half = len(packed) // 2
    topic = TOPICS.logs("pi-1", request_id)
    # Hostile first: none of these may store anything or stop the fleet.
    device.publish(topic, b"not json at all")
    device.publish(topic, b'{"kind": "log-chunk"}')
    device.publish(topic, chunk("pi-2", request_id, 0, 1, packed))  # names another device
    device.publish(
        TOPICS.logs("pi-2", request_id), chunk("pi-2", request_id, 0, 1, packed)
    )  # not asked of pi-2
    device.publish(TOPICS.logs("pi-1", "nobody-asked-1"), chunk("pi-1", "nobody-asked-1", 0, 1, packed))
    # The real answer, out of order and with a duplicate.
    device.publish(topic, chunk("pi-1", request_id, 1, 2, packed[half:], lines=2000))
    device.publish(topic, chunk("pi-1", request_id, 1, 2, packed[half:], lines=2000))
    device.publish(topic, chunk("pi-1", request_id, 0, 2, packed[:half], lines=2000))
    found = answer(fleet, "pi-1", request_id)
    assert found["state"] == "done" and found["error"] is None
    assert found["text"] == text and found["lines"] == 2000

    # A decompression bomb: small on the wire, far over the limit once inflated.
    bomb_id = ask(fleet, "pi-1")
    bomb = zlib.compress(b"\0" * (MAX_LOG_BYTES * 4), 9)
    assert len(bomb) < 32 * 1024
    device.publish(TOPICS.logs("pi-1", bomb_id), chunk("pi-1", bomb_id, 0, 1, bomb))
    refused = answer(fleet, "pi-1", bomb_id)
    assert refused["state"] == "failed" and "larger than" in refused["error"] and refused["text"] is None

    # Nobody's answers were stored, another device cannot read pi-1's, and the ingest goes on.
    assert requests.get(f"{fleet.url}/api/v1/devices/pi-2/logs/{request_id}", timeout=5).status_code == 404
    assert fleet.server.logs.dropped >= 5 and fleet.server.logs.stored == 2
    device.publish(TOPICS.status("pi-3"), status("pi-3"))
    wait_until(lambda: len(fleet.json("/api/v1/devices")) == 3, "the ingest to go on", 10, 0.05)
    listener.close()


def test_the_shipped_acl_lets_a_device_answer_only_for_itself(
    tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    """With the shipped ACL and password file: dev-a cannot publish on dev-b's log topic, and what
    it publishes on its own for dev-b's request is not taken as dev-b's answer."""
    secrets = {"dev-a": "secret-of-a-0123456789", "dev-b": "secret-of-b-0123456789"}
    folder = tmp_path / "secure"
    folder.mkdir()
    passwd = folder / "passwd"
    lines = [f"{FLEET_BROKER_USER}:{hash_secret(FLEET_PASSWORD)}"]
    passwd.write_text("\n".join(lines + [f"{d}:{hash_secret(s)}" for d, s in secrets.items()]) + "\n")
    (folder / "acl").write_text(acl_text(TOPICS.prefix))
    extra = f"password_file {passwd}\nacl_file {folder / 'acl'}\n{shipped_listener_settings()}"
    with MosquittoBroker(folder / "mosquitto", extra_config=extra) as broker:
        base = fleet_config(tmp_path, broker, signing_keys)
        mqtt_settings = MqttSettings(
            host=broker.host, port=broker.port, username=FLEET_BROKER_USER, password=FLEET_PASSWORD
        )
        with running_fleet(base.model_copy(update={"mqtt": mqtt_settings})) as fleet:
            devices = {name: login(broker, name, secret) for name, secret in secrets.items()}
            try:
                for name, client in devices.items():
                    send(client, TOPICS.status(name), status(name))
                wait_until(lambda: len(fleet.json("/api/v1/devices")) == 2, "both devices", 10, 0.05)
                request_id = ask(fleet, "dev-b")
                forged = zlib.compress(b"forged by dev-a\n")
                send(
                    devices["dev-a"],
                    TOPICS.logs("dev-b", request_id),
                    chunk("dev-b", request_id, 0, 1, forged),
                )
                send(
                    devices["dev-a"],
                    TOPICS.logs("dev-a", request_id),
                    chunk("dev-a", request_id, 0, 1, forged),
                )
                wait_until(
                    lambda: fleet.server.logs.dropped >= 1, "dev-a's answer on its own topic dropped", 5
                )
                real = zlib.compress(b"dev-b's own log\n")
                send(
                    devices["dev-b"],
                    TOPICS.logs("dev-b", request_id),
                    chunk("dev-b", request_id, 0, 1, real, 1),
                )
                assert answer(fleet, "dev-b", request_id)["text"] == "dev-b's own log\n"
            finally:
                for client in devices.values():
                    client.disconnect()
                    client.loop_stop()


def test_answers_in_progress_are_bounded_in_memory() -> None:
    """Chunks of answers that never complete cannot make the fleet hold more than its budget."""
    collector = LogCollector(create_engine("sqlite://"), TOPICS, max_pending=4, max_pending_bytes=100_000)
    piece = bytes(range(256)) * 120  # 30 KiB: incompressible enough to keep its size
    for n in range(10):
        request_id = f"stuck-request-{n}"
        collector.on_message(TOPICS.logs("pi-1", request_id), chunk("pi-1", request_id, 0, 2, piece))
    assert len(collector._pending) <= 3 and collector._pending_bytes <= 100_000
    assert collector.dropped >= 6
