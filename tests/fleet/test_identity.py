"""No device speaks for another, on a real Mosquitto with the shipped broker settings, password file
and ACL: a device cannot take the fleet's session or another device's by choosing their client id,
and the fleet user may publish everything its documented features need."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.mosquitto import MosquittoBroker
from fleet.auth import hash_secret
from fleet.config import MqttSettings
from fleet.provision import FLEET_BROKER_USER, acl_text
from fleet.server import FleetServer
from protocol.messages import Presence
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import status, wait_for
from tests.fleet.mqtt_helpers import telemetry as telemetry_payload
from tests.support.fleet import (
    SHIPPED_BROKER,
    RunningFleet,
    fleet_config,
    running_fleet,
    shipped_listener_settings,
)

TOPICS = Topics()
FLEET_PASSWORD = "fleet-password-0123456789"
SECRETS = {"dev-a": "secret-of-a-0123456789", "dev-b": "secret-of-b-0123456789"}
SHIPPED_ACL = SHIPPED_BROKER / "edgefleet.acl"


def test_the_shipped_acl_is_the_one_the_fleet_prints() -> None:
    assert SHIPPED_ACL.read_text() == acl_text(TOPICS.prefix)
    assert "use_username_as_clientid true" in shipped_listener_settings()


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    folder = tmp_path / "secure"
    folder.mkdir()
    passwd = folder / "passwd"
    lines = [f"{FLEET_BROKER_USER}:{hash_secret(FLEET_PASSWORD)}"]
    lines += [f"{device}:{hash_secret(secret)}" for device, secret in SECRETS.items()]
    passwd.write_text("\n".join(lines) + "\n")
    acl = folder / "acl"
    acl.write_text(acl_text(TOPICS.prefix))
    # After the launcher's own listener lines: the last setting of a listener option wins.
    extra = f"password_file {passwd}\nacl_file {acl}\n{shipped_listener_settings()}"
    with MosquittoBroker(folder / "mosquitto", extra_config=extra) as broker:
        yield broker


class Device:
    """A device's MQTT connection with a last will, recording how it ends."""

    def __init__(self, broker: MosquittoBroker, user: str, client_id: str) -> None:
        self.disconnects: list[str] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(user, SECRETS[user])
        self.client.will_set(TOPICS.status(user), status(user, Presence.OFFLINE), qos=1, retain=True)
        self.client.on_disconnect = self._gone
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5)

    def _gone(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.disconnects.append(str(reason))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_device_takes_neither_the_fleets_session_nor_another_devices(
    secure_broker: MosquittoBroker, tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    base = fleet_config(tmp_path, secure_broker, signing_keys)
    settings = MqttSettings(
        host=secure_broker.host, port=secure_broker.port, username=FLEET_BROKER_USER, password=FLEET_PASSWORD
    )
    server = FleetServer(base.model_copy(update={"mqtt": settings}))
    connects: list[int] = []
    on_connect = server.ingester._client.on_connect
    server.ingester._client.on_connect = lambda *args: (connects.append(1), on_connect(*args))  # type: ignore[misc]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    device_b = attacker = None
    try:
        assert server.listening.wait(10) and server.ingester.wait_connected(10)
        fleet = RunningFleet(server, server.url, base)
        device_b = Device(secure_broker, "dev-b", "dev-b")
        device_b.publish(TOPICS.status("dev-b"), status("dev-b"), retain=True)
        wait_for(lambda: fleet.get("/api/v1/devices/dev-b").status_code == 200)

        # dev-a logs in with its own secret but asks for the fleet's client id, then for dev-b's.
        stolen_ids = (settings.client_id, FLEET_BROKER_USER, "dev-b", f"x-{uuid.uuid4().hex[:6]}")
        for seq, stolen in enumerate(stolen_ids):
            attacker = Device(secure_broker, "dev-a", stolen)
            attacker.publish(TOPICS.telemetry("dev-a"), telemetry_payload("dev-a", seq=seq))
            attacker.close()

        # Everything dev-b sends after the attempts arrives: its session was never taken over...
        device_b.publish(TOPICS.telemetry("dev-b"), telemetry_payload("dev-b", seq=1))
        wait_for(lambda: len(fleet.json("/api/v1/devices/dev-b/telemetry")) == 1)
        assert device_b.disconnects == [] and device_b.client.is_connected()
        assert fleet.json("/api/v1/devices/dev-b")["presence"] == "online"  # no last will was fired
        # ...and the fleet kept its one connection (and with it its persistent session).
        wait_for(lambda: len(fleet.json("/api/v1/devices/dev-a/telemetry")) == 4)
        assert connects == [1] and server.ingester.connected
    finally:
        for client in (device_b,):
            if client is not None:
                client.close()
        server.stop()
        thread.join(15)


def test_a_denied_publish_is_logged_and_sent_again_once_allowed(
    tmp_path: Path, signing_keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL without Home Assistant's topics: the broker's refusal (MQTT v5 reason code 135) is
    logged, and the discovery configs arrive once the ACL allows them (reloaded with SIGHUP)."""
    folder = tmp_path / "acl-reload"
    folder.mkdir()
    passwd, acl = folder / "passwd", folder / "acl"
    observer_secret = "observer-0123456789"
    passwd.write_text(
        f"{FLEET_BROKER_USER}:{hash_secret(FLEET_PASSWORD)}\n"
        f"dev-b:{hash_secret(SECRETS['dev-b'])}\nobserver:{hash_secret(observer_secret)}\n"
    )
    observer_acl = "\nuser observer\ntopic read #\n"
    full = acl_text(TOPICS.prefix)
    acl.write_text(full.replace("topic write homeassistant/sensor/#\n", "") + observer_acl)
    extra = f"password_file {passwd}\nacl_file {acl}\n{shipped_listener_settings()}"
    with MosquittoBroker(folder / "mosquitto", extra_config=extra) as broker:
        base = fleet_config(tmp_path, broker, signing_keys)
        settings = MqttSettings(
            host=broker.host, port=broker.port, username=FLEET_BROKER_USER, password=FLEET_PASSWORD
        )
        config = base.model_copy(
            update={
                "mqtt": settings,
                "homeassistant_discovery": True,
                "rollout_tick_s": 0.2,
                "summary_interval_s": 0.5,
            }
        )
        observer = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        observer.username_pw_set("observer", observer_secret)
        configs: list[str] = []
        observer.on_message = lambda _c, _u, message: configs.append(message.topic)
        observer.connect(broker.host, broker.port)
        observer.loop_start()
        device_b = Device(broker, "dev-b", "dev-b")
        try:
            wait_for(observer.is_connected, 5)
            observer.subscribe("homeassistant/#", qos=1)
            device_b.publish(TOPICS.status("dev-b"), status("dev-b"), retain=True)
            with running_fleet(config):
                wait_for(lambda: "the broker refused the publish to homeassistant/sensor/" in caplog.text, 15)
                assert "Not authorized" in caplog.text
                acl.write_text(full + observer_acl)
                assert broker._process is not None
                broker._process.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL file
                wait_for(lambda: "homeassistant/sensor/edgefleet_dev-b/latency_p95/config" in configs, 15)
        finally:
            device_b.close()
            observer.disconnect()
            observer.loop_stop()
