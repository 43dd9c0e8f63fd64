"""Device identity lifecycle on a real Mosquitto (the fleet keeps its password file and reloads it
through Mosquitto's own pid file) and a real fleet over HTTP: provisioned devices are listed before
they report, revoke, rotate-secret and delete take effect at once on HTTP and on the broker."""

from __future__ import annotations

import shutil
import threading
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from edgefleet.mosquitto import MosquittoBroker
from fleet.__main__ import main as fleet_main
from fleet.auth import hash_secret
from fleet.broker_files import BrokerFilesError, PasswordFile
from fleet.config import FleetConfig, MqttSettings
from fleet.ingest.decode import Decoded, Received, decode
from fleet.provision import FLEET_BROKER_USER
from fleet.rollout_spec import Target
from fleet.storage import repository
from fleet.storage.rollouts import resolve_target
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import TestClient as MqttTestClient
from tests.fleet.mqtt_helpers import status, wait_for
from tests.fleet.mqtt_helpers import telemetry as telemetry_payload
from tests.fleet.test_poison import recent_window
from tests.fleet.test_poison import window as poison_window
from tests.support.fleet import (
    SHIPPED_BROKER,
    InProcessFleet,
    RunningFleet,
    fleet_config,
    running_fleet,
    shipped_listener_settings,
)

TOPICS = Topics()
FLEET_PASSWORD = "fleet-password-0123456789"
ADMIN = "admin-token-0123456789"


class Login:
    """One MQTT v5 connection attempt as a device; records the broker's answer and any disconnect."""

    def __init__(self, broker: MosquittoBroker, user: str, secret: str) -> None:
        self.answered = threading.Event()
        self.refused: bool | None = None
        self.dropped = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(user, secret)
        self.client.on_connect = self._connected
        self.client.on_disconnect = lambda *_args: self.dropped.set()
        self.client.reconnect_delay_set(60, 60)  # no quiet reconnects while a test watches
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.answered.wait(5), f"the broker did not answer {user}'s CONNECT"

    def _connected(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.refused = bool(reason.is_failure)
        self.answered.set()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def logs_in(broker: MosquittoBroker, user: str, secret: str) -> bool:
    login = Login(broker, user, secret)
    login.close()
    return login.refused is False


@dataclass
class Lifecycle:
    fleet: RunningFleet
    broker: MosquittoBroker
    passwd: Path

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        return requests.request(method, f"{self.fleet.url}{path}", headers=headers, timeout=10, **kwargs)

    def as_device(self, device_id: str, secret: str, path: str | None = None) -> int:
        url = f"{self.fleet.url}{path or f'/api/v1/devices/{device_id}/desired'}"
        return requests.get(url, auth=(device_id, secret), timeout=10).status_code

    def devices(self) -> dict[str, dict[str, Any]]:
        response = self.call("GET", "/api/v1/devices")
        assert response.status_code == 200, response.text
        return {d["device_id"]: d for d in response.json()}

    def add(self, device_id: str) -> str:
        body = {"device_id": device_id, "mqtt_host": "broker.plant", "fleet_url": "https://fleet.plant"}
        response = self.call("POST", "/api/v1/devices", json=body)
        assert response.status_code == 201, response.text
        answer = response.json()
        assert answer["broker"]["applied"] is True and "SIGHUP" in answer["broker"]["instructions"]
        return str(answer["secret"])


@pytest.fixture
def lifecycle(tmp_path: Path, signing_keys: tuple[Path, Path], db_url: str) -> Iterator[Lifecycle]:
    folder = tmp_path / "broker"
    folder.mkdir()
    passwd, acl, pid = folder / "passwd", folder / "acl", folder / "mosquitto.pid"
    passwd.write_text(f"{FLEET_BROKER_USER}:{hash_secret(FLEET_PASSWORD)}\n")
    passwd.chmod(0o600)
    shutil.copyfile(SHIPPED_BROKER / "edgefleet.acl", acl)  # the ACL as shipped, not a test's own
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin ada {ADMIN}\n")
    extra = f"password_file {passwd}\nacl_file {acl}\npid_file {pid}\n{shipped_listener_settings()}"
    with MosquittoBroker(folder / "mosquitto", extra_config=extra) as broker:
        wait_for(pid.exists, 5)
        base = fleet_config(tmp_path, broker, signing_keys, db_url)
        mqtt_settings = MqttSettings(
            host=broker.host, port=broker.port, username=FLEET_BROKER_USER, password=FLEET_PASSWORD
        )
        config = base.model_copy(
            update={
                "mqtt": mqtt_settings,
                "tokens_file": tokens,
                "broker_password_file": passwd,
                "broker_pid_file": pid,
            }
        )
        with running_fleet(config) as fleet:
            yield Lifecycle(fleet, broker, passwd)


def test_provisioned_then_active_then_revoked(lifecycle: Lifecycle) -> None:
    secret = lifecycle.add("dev-a")
    listed = lifecycle.devices()["dev-a"]
    assert (listed["state"], listed["presence"], listed["last_seen"]) == ("provisioned", "unknown", None)
    # The fleet wrote the line (the file keeps its mode) and Mosquitto reloaded it: the device logs in.
    assert lifecycle.passwd.stat().st_mode & 0o777 == 0o600
    assert FLEET_BROKER_USER in lifecycle.passwd.read_text()
    wait_for(lambda: logs_in(lifecycle.broker, "dev-a", secret))
    device = Login(lifecycle.broker, "dev-a", secret)
    try:
        assert device.refused is False
        device.publish(TOPICS.status("dev-a"), status("dev-a"))
        wait_for(lambda: lifecycle.devices()["dev-a"]["state"] == "active")
        assert lifecycle.as_device("dev-a", secret) == 200

        answer = lifecycle.call("POST", "/api/v1/devices/dev-a/revoke")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "revoked" and answer.json()["broker"]["applied"] is True

        # HTTP: refused at once, for the desired state and for any bundle.
        assert lifecycle.as_device("dev-a", secret) == 403
        assert lifecycle.as_device("dev-a", secret, "/api/v1/models/digits/1.0.0/bundle") == 403
        # MQTT: the reload drops the open connection, and the broker refuses the login from then on.
        assert device.dropped.wait(10), "Mosquitto kept the revoked device connected after the reload"
        assert not logs_in(lifecycle.broker, "dev-a", secret)
        assert "dev-a:" not in lifecycle.passwd.read_text()
        # Its publish has no connection to go out on, and nothing of it reaches the fleet.
        sent = device.client.publish(TOPICS.telemetry("dev-a"), telemetry_payload("dev-a", seq=1), qos=1)
        assert sent.rc == mqtt.MQTT_ERR_NO_CONN
        assert lifecycle.call("GET", "/api/v1/devices/dev-a/telemetry").json() == []
        assert lifecycle.devices()["dev-a"]["state"] == "revoked"  # still listed, as revoked
        rotate = lifecycle.call("POST", "/api/v1/devices/dev-a/rotate-secret")
        assert rotate.status_code == 409 and "revoked" in rotate.json()["detail"]
    finally:
        device.close()


def test_device_revoke_on_the_cli_refuses_http_and_the_broker(
    lifecycle: Lifecycle, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = lifecycle.add("dev-r")
    wait_for(lambda: logs_in(lifecycle.broker, "dev-r", secret))
    assert lifecycle.as_device("dev-r", secret) == 200
    assert "dev-r:" in lifecycle.passwd.read_text()

    code = fleet_main(["device", "revoke", "dev-r", "--fleet", lifecycle.fleet.url, "--token", ADMIN])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "device dev-r revoked" in out and "# broker: dev-r" in out
    # HTTP Basic: the secret opens nothing now, neither the desired state nor a bundle.
    assert lifecycle.as_device("dev-r", secret) == 403
    assert lifecycle.as_device("dev-r", secret, "/api/v1/models/digits/1.0.0/bundle") == 403
    # The broker: its line is gone from the password file and Mosquitto (reloaded) refuses the login.
    assert "dev-r:" not in lifecycle.passwd.read_text()
    assert FLEET_BROKER_USER in lifecycle.passwd.read_text()
    wait_for(lambda: not logs_in(lifecycle.broker, "dev-r", secret))
    assert lifecycle.devices()["dev-r"]["state"] == "revoked"


POISON_DEVICES, POISON_WINDOWS = ("dev-p1", "dev-p2", "dev-p3", "dev-p4"), 25


def _own_poison(device_id: str) -> list[tuple[str, str, bytes]]:
    """(reason, topic, payload): bad messages a device may send on its own topics under the ACL."""
    own = TOPICS.telemetry(device_id)
    return [
        ("too-deep", own, b"[" * 200_000),
        ("out-of-range", own, poison_window(device_id, requests=2**63)),
        ("malformed-json", own, b"\xff\xfe\x00not json"),
        ("malformed-json", TOPICS.events(device_id), b""),
        ("schema", own, b"[1, 2, 3]"),
        ("schema-version", own, poison_window(device_id, schema_version=2)),
        ("device-id-mismatch", own, telemetry_payload("someone-else")),
        ("oversize", own, b"{" + b" " * 300_000 + b"}"),
    ]


def test_poison_from_devices_with_their_own_credentials_loses_nothing(lifecycle: Lifecycle) -> None:
    """The fleet-written password file and the shipped ACL: several devices, each logged in as
    itself, send their windows with poison among them; every window is stored exactly once, every
    poison message is dead-lettered with its reason, and what the ACL denies never arrives."""
    logins: dict[str, Login] = {}
    try:
        for device_id in POISON_DEVICES:
            secret = lifecycle.add(device_id)
            wait_for(lambda device_id=device_id, secret=secret: logs_in(lifecycle.broker, device_id, secret))
            logins[device_id] = Login(lifecycle.broker, device_id, secret)
            assert logins[device_id].refused is False
        poison = {device_id: _own_poison(device_id) for device_id in POISON_DEVICES}
        expected: Counter[str] = Counter()
        sent = 0
        for seq in range(POISON_WINDOWS):
            for device_id, login in logins.items():
                login.publish(TOPICS.telemetry(device_id), recent_window(device_id, seq))
                sent += 1
                if seq % 3 == 1 and poison[device_id]:
                    reason, topic, payload = poison[device_id].pop()
                    login.publish(topic, payload)
                    expected[reason] += 1
                    sent += 1
        assert not any(poison.values()), "the stream is too short for every kind of poison"
        # What the ACL denies (another device's topic, the fleet's commands) never reaches the fleet.
        spoofer = logins[POISON_DEVICES[0]]
        spoofer.client.publish(
            TOPICS.telemetry(POISON_DEVICES[1]), recent_window(POISON_DEVICES[1], 999), qos=1
        )
        spoofer.client.publish(TOPICS.status(POISON_DEVICES[1]), status(POISON_DEVICES[1]), qos=1)

        def acked() -> int:
            return int(lifecycle.call("GET", "/api/v1/stats").json()["acked"])

        wait_for(lambda: acked() >= sent, 60, interval_s=0.2)
        stats = lifecycle.call("GET", "/api/v1/stats").json()
        assert (stats["stored"], stats["duplicates"]) == (len(POISON_DEVICES) * POISON_WINDOWS, 0)
        assert Counter(stats["dead_lettered"]) == expected
        assert stats["acked"] == sent
        letters = lifecycle.call("GET", "/api/v1/dead-letters?limit=1000").json()
        assert Counter(letter["reason"] for letter in letters) == expected
        assert all(letter["detail"] for letter in letters)
        for device_id in POISON_DEVICES:
            windows = lifecycle.call("GET", f"/api/v1/devices/{device_id}/telemetry?limit=1000").json()
            assert sorted(window["seq"] for window in windows) == list(range(POISON_WINDOWS)), device_id
        assert lifecycle.devices()[POISON_DEVICES[1]]["presence"] == "unknown"  # the spoofed status
    finally:
        for login in logins.values():
            login.close()


def test_rotate_secret_then_delete(lifecycle: Lifecycle, capsys: pytest.CaptureFixture[str]) -> None:
    old = lifecycle.add("dev-b")
    wait_for(lambda: logs_in(lifecycle.broker, "dev-b", old))
    assert lifecycle.as_device("dev-b", old) == 200
    held = Login(lifecycle.broker, "dev-b", old)
    assert held.refused is False

    # Through the operator CLI: the new secret is printed once, and applied to the broker.
    code = fleet_main(["device", "rotate-secret", "dev-b", "--fleet", lifecycle.fleet.url, "--token", ADMIN])
    out = capsys.readouterr().out
    assert code == 0, out
    new = out.split("(shown once): ", 1)[1].split()[0]
    assert "# broker: dev-b written to" in out
    assert lifecycle.as_device("dev-b", old) == 401
    assert lifecycle.as_device("dev-b", new) == 200
    assert held.dropped.wait(10), "the reload left the connection made with the old secret open"
    held.close()
    assert not logs_in(lifecycle.broker, "dev-b", old)
    assert logs_in(lifecycle.broker, "dev-b", new)

    code = fleet_main(["device", "delete", "dev-b", "--fleet", lifecycle.fleet.url, "--token", ADMIN])
    assert code == 0 and "device dev-b deleted" in capsys.readouterr().out
    assert "dev-b" not in lifecycle.devices()
    assert lifecycle.as_device("dev-b", new) == 401
    wait_for(lambda: not logs_in(lifecycle.broker, "dev-b", new))  # Mosquitto reloads on its own time
    assert lifecycle.call("DELETE", "/api/v1/devices/dev-b").status_code == 404

    # device add names the fleet and the broker as the device reaches them.
    where = ["--fleet-url", "https://fleet.plant", "--mqtt-host", "broker.plant", "--mqtt-port", "8883"]
    code = fleet_main(["device", "add", "dev-c", *where, "--fleet", lifecycle.fleet.url, "--token", ADMIN])
    out = capsys.readouterr().out
    assert code == 0 and "# broker: dev-c written to" in out
    assert 'url = "https://fleet.plant"' in out and 'host = "broker.plant"' in out and "port = 8883" in out


def test_without_the_password_file_the_answer_says_what_to_apply(api: InProcessFleet) -> None:
    client = api.client
    added = client.post("/api/v1/devices", json={"device_id": "pi.1"}).json()
    assert added["broker"]["applied"] is False
    assert (
        f"append to Mosquitto's password_file\n{added['password_file_line']}\n"
        in added["broker"]["instructions"]
    )
    rotated = client.post("/api/v1/devices/pi.1/rotate-secret").json()
    assert rotated["secret"] != added["secret"] and rotated["broker"]["applied"] is False
    assert f"with\n{rotated['password_file_line']}\n" in rotated["broker"]["instructions"]
    revoked = client.post("/api/v1/devices/pi.1/revoke").json()
    assert revoked["state"] == "revoked"
    assert r"sed -i '/^pi\.1:/d' /etc/mosquitto/edgefleet.passwd" in revoked["broker"]["instructions"]
    for method, path in (
        ("POST", "/api/v1/devices/ghost/revoke"),
        ("POST", "/api/v1/devices/ghost/rotate-secret"),
        ("DELETE", "/api/v1/devices/ghost"),
    ):
        answer = client.request(method, path)
        assert answer.status_code == 404 and "ghost" in answer.json()["detail"]
    again = client.post("/api/v1/devices", json={"device_id": "pi.1"})
    assert again.status_code == 409 and "delete it first" in again.json()["detail"]
    assert client.delete("/api/v1/devices/pi.1").json()["state"] == "deleted"
    assert client.get("/api/v1/devices/pi.1").status_code == 404
    assert client.post("/api/v1/devices", json={"device_id": "pi.1"}).status_code == 201


def test_a_loopback_default_is_refused_when_the_fleet_is_reached_from_elsewhere(api: InProcessFleet) -> None:
    api.context.base_url, api.context.mqtt_host, api.context.mqtt_port = (
        "https://fleet.plant",
        "127.0.0.1",
        1883,
    )
    api.context.exposed = True
    refused = api.client.post("/api/v1/devices", json={"device_id": "pi-1"})
    assert refused.status_code == 400 and "--mqtt-host" in refused.json()["detail"]
    body = {"device_id": "pi-1", "mqtt_host": "broker.plant", "mqtt_port": 8883}
    config = tomllib.loads(api.client.post("/api/v1/devices", json=body).json()["agent_config"])
    assert (config["fleet"]["url"], config["mqtt"]["host"], config["mqtt"]["port"]) == (
        "https://fleet.plant",
        "broker.plant",
        8883,
    )
    api.context.base_url = "http://0.0.0.0:8080"  # fleet serve --listen 0.0.0.0 without --public-url
    refused = api.client.post("/api/v1/devices", json={"device_id": "pi-2", "mqtt_host": "broker.plant"})
    assert refused.status_code == 400 and "--fleet-url" in refused.json()["detail"]
    # On one machine (the fleet reached only on loopback) loopback is right: the demo and the tests.
    api.context.exposed = False
    assert api.client.post("/api/v1/devices", json={"device_id": "pi-3"}).status_code == 201


def test_the_password_file_keeps_other_users_and_names_a_failed_reload(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("edgefleet-fleet:$7$x\npi-1:$7$old\npi-10:$7$other\n")
    kept = PasswordFile(path, reload_command="true")
    assert kept.apply("pi-1", "pi-1:$7$new").applied
    assert path.read_text() == "edgefleet-fleet:$7$x\npi-10:$7$other\npi-1:$7$new\n"
    kept.apply("pi-1", None)
    assert path.read_text() == "edgefleet-fleet:$7$x\npi-10:$7$other\n"
    with pytest.raises(BrokerFilesError, match="exited 1"):
        PasswordFile(path, reload_command="false").apply("pi-2", "pi-2:$7$y")
    with pytest.raises(BrokerFilesError, match=r"cannot signal the pid in .*missing\.pid"):
        PasswordFile(path, pid_file=tmp_path / "missing.pid").apply("pi-2", None)
    with pytest.raises(BrokerFilesError, match="exactly one way to reload"):
        PasswordFile(path)
    with pytest.raises(BrokerFilesError, match="does not exist"):
        PasswordFile(tmp_path / "nope", reload_command="true").check()


@pytest.mark.parametrize(
    "broker",
    [
        {"broker_pid_file": "/run/mosquitto.pid"},
        {"broker_password_file": "passwd"},
        {"broker_password_file": "passwd", "broker_pid_file": "pid", "broker_reload_command": "true"},
    ],
)
def test_serve_config_needs_one_reload_with_the_password_file(broker: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="exactly one of broker_pid_file and broker_reload_command"):
        FleetConfig(trusted_keys=[Path("keys")], **broker)


def test_what_a_revoked_device_still_sends_is_dead_lettered(
    fleet: RunningFleet, device: MqttTestClient
) -> None:
    """The operator keeps the password file and has not removed the line yet: the broker still
    lets the device publish, and the fleet refuses what it sends."""
    assert fleet.post("/api/v1/devices", json={"device_id": "dev-r"}).status_code == 201
    device.publish(TOPICS.status("dev-r"), status("dev-r"))
    wait_for(lambda: fleet.json("/api/v1/devices/dev-r")["state"] == "active")
    revoked = fleet.post("/api/v1/devices/dev-r/revoke").json()
    assert revoked["broker"]["applied"] is False and "until then" in revoked["broker"]["instructions"]
    device.publish(TOPICS.telemetry("dev-r"), telemetry_payload("dev-r", seq=1))
    wait_for(lambda: fleet.json("/api/v1/stats")["dead_lettered"].get("revoked") == 1)
    assert fleet.json("/api/v1/devices/dev-r/telemetry") == []
    letter = fleet.json("/api/v1/dead-letters")[0]
    assert (letter["reason"], letter["detail"]) == ("revoked", "device dev-r was revoked")


def test_rollouts_leave_revoked_devices_out(api: InProcessFleet) -> None:
    topics = Topics()
    for device_id in ("pi-1", "pi-2"):
        assert api.client.post("/api/v1/devices", json={"device_id": device_id}).status_code == 201
        item = decode(
            Received(topics.status(device_id), status(device_id), repository.now()), topics, 1 << 20
        )
        assert isinstance(item, Decoded)
        with api.context.engine.begin() as conn:
            repository.store_decoded(conn, item)
    assert api.client.post("/api/v1/devices/pi-2/revoke").status_code == 200
    with api.context.engine.begin() as conn:
        chosen = resolve_target(conn, Target(all=True))
        named = resolve_target(conn, Target(devices=["pi-1", "pi-2"]))
    assert [device_id for device_id, _presence in chosen] == ["pi-1"]
    assert [device_id for device_id, _presence in named] == ["pi-1"]
