"""Ingestion under hostile or broken conditions: broker ACLs, huge and alien messages, a SIGKILLed fleet."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, func, select

from edgefleet.mosquitto import MosquittoBroker
from fleet.auth import hash_secret
from fleet.config import MqttSettings
from fleet.provision import acl_text
from fleet.server import FleetServer
from fleet.storage.schema import devices, telemetry
from protocol.topics import DeviceChannel, Topics
from tests.fleet.mqtt_helpers import TestClient, status, wait_for
from tests.fleet.mqtt_helpers import telemetry as telemetry_payload
from tests.support.fleet import RunningFleet, fleet_config
from tests.support.processes import FleetProcess

TOPICS = Topics()
TOPICS_TELEMETRY = DeviceChannel.TELEMETRY
FLEET_PASSWORD = "fleet-password-0123456789"
SECRETS = {"dev-a": "secret-of-a-0123456789", "dev-b": "secret-of-b-0123456789"}


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Mosquitto with allow_anonymous false, our password-file lines and our %u ACL patterns."""
    folder = tmp_path / "secure"
    folder.mkdir()
    passwd = folder / "passwd"
    lines = [f"edgefleet-fleet:{hash_secret(FLEET_PASSWORD)}"]
    lines += [f"{device}:{hash_secret(secret)}" for device, secret in SECRETS.items()]
    passwd.write_text("\n".join(lines) + "\n")
    acl = folder / "acl"
    acl.write_text(acl_text(TOPICS.prefix))
    extra = f"password_file {passwd}\nacl_file {acl}\n"
    broker = MosquittoBroker(folder / "mosquitto", extra_config=extra)
    # The launcher writes allow_anonymous true; the last setting of a listener option wins in 2.0.
    broker.extra_config += "allow_anonymous false\n"
    with broker:
        yield broker


def login(broker: MosquittoBroker, user: str, password: str) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{user}-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(user, password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    wait_for(client.is_connected, 5)
    return client


def test_broker_acl_stops_a_device_publishing_as_another(
    secure_broker: MosquittoBroker, tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    base = fleet_config(tmp_path, secure_broker, signing_keys)
    config = base.model_copy(
        update={
            "mqtt": MqttSettings(
                host=secure_broker.host,
                port=secure_broker.port,
                client_id="fleet-acl-test",
                username="edgefleet-fleet",
                password=FLEET_PASSWORD,
            )
        }
    )
    server = FleetServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert server.listening.wait(10)
        assert server.ingester.wait_connected(10), "the fleet could not log in to the broker"
        running = RunningFleet(server, server.url, config)
        # A wrong password is refused by the broker.
        intruder = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        intruder.username_pw_set("dev-a", "wrong")
        assert intruder.connect(secure_broker.host, secure_broker.port) == 0
        intruder.loop(timeout=2)
        assert not intruder.is_connected()

        device_a = login(secure_broker, "dev-a", SECRETS["dev-a"])
        received: list[str] = []
        device_a.on_message = lambda _c, _u, m: received.append(m.topic)
        device_a.subscribe(TOPICS.cmd("dev-b"), qos=1)  # not its own cmd topic: never delivered
        device_a.subscribe(TOPICS.cmd("dev-a"), qos=1)
        # dev-a forges dev-b's status and telemetry (topic and payload agree, so only the broker can tell).
        for topic, payload in (
            (TOPICS.status("dev-b"), status("dev-b")),
            (TOPICS.telemetry("dev-b"), telemetry_payload("dev-b", seq=0)),
        ):
            device_a.publish(topic, payload, qos=1).wait_for_publish(5)
        # ...then its own, which arrive; anything forged would have arrived first (one session, in order).
        device_a.publish(TOPICS.status("dev-a"), status("dev-a"), qos=1, retain=True).wait_for_publish(5)
        device_a.publish(
            TOPICS.telemetry("dev-a"), telemetry_payload("dev-a", seq=0), qos=1
        ).wait_for_publish(5)
        wait_for(lambda: len(running.json("/api/v1/devices/dev-a/telemetry")) == 1)
        assert [d["device_id"] for d in running.json("/api/v1/devices")] == ["dev-a"]
        assert running.json("/api/v1/devices/dev-b/telemetry") == []
        assert running.json("/api/v1/stats")["dead_lettered"] == {}

        assert server.ingester.publish(TOPICS.cmd("dev-b"), b"{}")
        assert server.ingester.publish(TOPICS.cmd("dev-a"), b"{}")
        wait_for(lambda: TOPICS.cmd("dev-a") in received, 5)
        assert TOPICS.cmd("dev-b") not in received
        device_a.disconnect()
        device_a.loop_stop()
    finally:
        server.stop()
        thread.join(15)


def test_huge_and_alien_messages_are_dead_lettered(fleet: RunningFleet, device: TestClient) -> None:
    device.publish(TOPICS.telemetry("pi-9"), b"{" + b" " * (10 * 1024 * 1024) + b"}")  # 10 MB
    future = json.loads(telemetry_payload("pi-9", seq=1))
    future["schema_version"] = 2
    device.publish(TOPICS.telemetry("pi-9"), json.dumps(future))
    device.publish(TOPICS.events("pi-9"), b"[1, 2, 3]")
    device.publish(TOPICS.status("pi-9"), status("pi-9"))
    wait_for(lambda: fleet.get("/api/v1/devices/pi-9").status_code == 200)
    stats = fleet.json("/api/v1/stats")
    assert stats["dead_lettered"] == {"oversize": 1, "schema-version": 1, "schema": 1}
    letters = {d["reason"]: d for d in fleet.json("/api/v1/dead-letters")}
    assert letters["oversize"]["payload_size"] == 10 * 1024 * 1024 + 2
    assert "schema_version 2" in letters["schema-version"]["detail"]
    wait_for(lambda: fleet.json("/api/v1/stats")["acked"] == 4)


def _serve(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], db: Path
) -> FleetProcess:
    fleet = FleetProcess(
        tmp_path,
        broker.port,
        signing_keys[1],
        mqtt_host=broker.host,
        db_url=f"sqlite:///{db}",
        client_id="fleet-sigkill-test",
        module="fleet",
    )
    fleet.start()
    return fleet


@pytest.mark.slow
def test_no_loss_when_the_fleet_is_killed_mid_stream(
    broker: MosquittoBroker, tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    db = tmp_path / "fleet.db"
    engine = create_engine(f"sqlite:///{db}")

    def stored() -> int:
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(telemetry)).scalar_one())
        except Exception:
            return 0

    process = _serve(tmp_path, broker, signing_keys, db)
    total, devices_n = 3000, 30
    publisher = TestClient(broker.host, broker.port)
    try:
        process.wait_ingesting(30)
        killed_at = None
        for i in range(total):
            device_id = f"k{i % devices_n:02d}"
            publisher.client.publish(
                TOPICS.telemetry(device_id), telemetry_payload(device_id, seq=i // devices_n), qos=1
            )
            if killed_at is None and i >= total // 3 and stored() > 0:
                process.kill()
                killed_at = i
        assert killed_at is not None, "the fleet stored nothing before the kill"
        wait_for(lambda: publisher.client.want_write() is False, 10)
        process = _serve(tmp_path, broker, signing_keys, db)
        wait_for(lambda: stored() == total, 60, interval_s=0.2)
        with engine.connect() as conn:
            per_device = conn.execute(
                select(telemetry.c.device_id, func.count()).group_by(telemetry.c.device_id)
            ).all()
            assert {count for _, count in per_device} == {total // devices_n}
            assert conn.execute(select(func.count()).select_from(devices)).scalar_one() == 0  # no status sent
    finally:
        publisher.close()
        process.stop()
        engine.dispose()


def test_shared_subscription_splits_the_stream(broker: MosquittoBroker, tmp_path: Path, db_url: str) -> None:
    """Two ingest workers in one MQTT v5 shared-subscription group: each stores a part, together all."""
    from fleet.ingest.ingester import Ingester
    from fleet.storage import create_engine_for_url

    engine = create_engine_for_url(db_url)
    workers = [
        Ingester(
            MqttSettings(host=broker.host, port=broker.port, client_id=f"worker-{i}", shared_group="ingest"),
            engine,
        )
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
        assert worker.wait_connected(10)
    assert workers[0].subscription(TOPICS_TELEMETRY) == f"$share/ingest/{TOPICS.prefix}/devices/+/telemetry"
    publisher = TestClient(broker.host, broker.port)
    try:
        for seq in range(200):
            device_id = f"s{seq % 10}"
            publisher.client.publish(
                TOPICS.telemetry(device_id), telemetry_payload(device_id, seq=seq // 10), qos=1
            )
        wait_for(lambda: sum(w.stats().stored for w in workers) == 200, 20)
        assert all(w.stats().stored > 0 for w in workers), [w.stats() for w in workers]
        assert sum(w.stats().duplicates for w in workers) == 0
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(telemetry)).scalar_one() == 200
    finally:
        publisher.close()
        for worker in workers:
            worker.stop()
        engine.dispose()
