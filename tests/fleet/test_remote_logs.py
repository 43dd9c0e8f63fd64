"""The fleet's side of remote logs over a real broker: the request goes out on the device's cmd
topic; the chunked answer is put together (out of order, duplicates once) and served; hostile
chunks (not JSON, another device's, nobody's request, a decompression bomb) are dropped and the
ingest goes on."""

from __future__ import annotations

import zlib
from typing import Any

import requests

from edgefleet.mosquitto import MosquittoBroker
from protocol.messages import Command, CommandKind, parse_message
from protocol.remote import MAX_LOG_BYTES, LogChunk
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import TestClient, status
from tests.support.fleet import RunningFleet
from tests.support.wait import wait_until

TOPICS = Topics()


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
