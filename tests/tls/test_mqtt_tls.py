"""The agent's MQTT link over TLS, against a real Mosquitto TLS listener with certificates made here."""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttTlsConfig
from agent.mqtt_link import MqttLink
from agent.outbox import Outbox
from agent.tls import TlsFileError, mqtt_context
from edgefleet.mosquitto import BrokerTls, MosquittoBroker
from protocol.topics import Topics
from tests.support.certs import Issued, TestCA
from tests.support.wait import wait_until

DEVICE = "dev-tls"
TOPICS = Topics("edgefleet/v1")


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def _broker(
    tmp_path: Path, ca: TestCA, server: Issued, *, require_certificate: bool = False
) -> MosquittoBroker:
    tls = BrokerTls(
        ca_file=ca.ca_file,
        cert_file=server.cert,
        key_file=server.key,
        require_certificate=require_certificate,
        use_identity_as_username=require_certificate,
    )
    return MosquittoBroker(tmp_path / "mosquitto", tls=tls)


@pytest.fixture
def tls_broker(tmp_path: Path, ca: TestCA) -> Iterator[MosquittoBroker]:
    with _broker(tmp_path, ca, ca.server()) as broker:
        yield broker


def _link(tmp_path: Path, broker: MosquittoBroker, tls: MqttTlsConfig) -> MqttLink:
    return MqttLink(
        DEVICE,
        broker.host,
        broker.port,
        TOPICS,
        agent_version="test",
        status=lambda: (None, None, None),
        on_check_update=lambda: None,
        outbox=Outbox(tmp_path / f"outbox-{uuid.uuid4().hex[:6]}.sqlite", limit=100),
        tls=mqtt_context(tls),
    )


def _retained_status(broker: MosquittoBroker, ca: TestCA, client: Issued | None = None) -> dict[str, Any]:
    """Read the device's retained status as another TLS client of the same broker."""
    got: list[dict[str, Any]] = []
    arrived = threading.Event()
    reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reader-{uuid.uuid4().hex[:6]}")
    reader.tls_set(
        ca_certs=str(ca.ca_file),
        certfile=str(client.cert) if client else None,
        keyfile=str(client.key) if client else None,
    )
    reader.on_connect = lambda c, u, f, r, p: c.subscribe(TOPICS.status(DEVICE), qos=1)

    def on_message(c: mqtt.Client, u: Any, message: mqtt.MQTTMessage) -> None:
        got.append(json.loads(message.payload))
        arrived.set()

    reader.on_message = on_message
    reader.connect(broker.host, broker.port)
    reader.loop_start()
    try:
        assert arrived.wait(10), "no retained status arrived over TLS"
    finally:
        reader.loop_stop()
        reader.disconnect()
    return got[0]


def test_the_agent_connects_over_tls_and_publishes(
    tmp_path: Path, ca: TestCA, tls_broker: MosquittoBroker
) -> None:
    link = _link(tmp_path, tls_broker, MqttTlsConfig(ca_file=ca.ca_file)).start()
    try:
        assert link.connected.wait(10), f"no TLS connection: {link.last_error}"
        link.publish(TOPICS.events(DEVICE), b'{"hello": 1}', 1, False)
        assert link.flush(10), "the broker did not acknowledge the message sent over TLS"
        status = _retained_status(tls_broker, ca)
        assert (status["device_id"], status["presence"]) == (DEVICE, "online")
        assert link.last_error is None
    finally:
        link.stop()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("another CA", "certificate is not trusted"),
        ("expired", "has expired"),
        ("wrong host", "does not name the host"),
    ],
)
def test_a_refused_broker_certificate_is_named(tmp_path: Path, ca: TestCA, case: str, expected: str) -> None:
    trusted = TestCA(tmp_path / "other-pki", "other") if case == "another CA" else ca
    server = ca.server(
        expired=case == "expired", hosts=("broker.example",) if case == "wrong host" else ("127.0.0.1",)
    )
    with _broker(tmp_path, ca, server) as broker:
        link = _link(tmp_path, broker, MqttTlsConfig(ca_file=trusted.ca_file)).start()
        try:
            error = wait_until(lambda: link.last_error, "the link to report the TLS failure", 10)
            assert expected in str(error), str(error)
            assert f"MQTT broker 127.0.0.1:{broker.port}" in str(error)
            assert not link.connected.is_set()
        finally:
            link.stop(timeout_s=0.5)


def test_check_hostname_false_accepts_a_certificate_for_another_name(tmp_path: Path, ca: TestCA) -> None:
    with _broker(tmp_path, ca, ca.server(hosts=("broker.example",))) as broker:
        link = _link(tmp_path, broker, MqttTlsConfig(ca_file=ca.ca_file, check_hostname=False)).start()
        try:
            assert link.connected.wait(10), f"no TLS connection: {link.last_error}"
        finally:
            link.stop()


def test_a_client_certificate_is_the_device_identity(tmp_path: Path, ca: TestCA) -> None:
    with _broker(tmp_path, ca, ca.server(), require_certificate=True) as broker:
        device = ca.client(DEVICE)
        link = _link(
            tmp_path, broker, MqttTlsConfig(ca_file=ca.ca_file, cert_file=device.cert, key_file=device.key)
        )
        anonymous = _link(tmp_path, broker, MqttTlsConfig(ca_file=ca.ca_file))
        link.start()
        anonymous.start()
        try:
            assert link.connected.wait(10), f"no TLS connection with a client certificate: {link.last_error}"
            assert _retained_status(broker, ca, ca.client("reader"))["device_id"] == DEVICE
            error = wait_until(
                lambda: anonymous.last_error, "the refusal of a device without a certificate", 10
            )
            assert "requires a client certificate" in str(error), str(error)
            assert not anonymous.connected.is_set()
        finally:
            anonymous.stop(timeout_s=0.5)
            link.stop()


@pytest.mark.parametrize("which", ["ca_file", "cert_file", "key_file"])
def test_missing_tls_files_are_named_at_start(tmp_path: Path, ca: TestCA, which: str) -> None:
    device = ca.client(DEVICE)
    files = {"ca_file": ca.ca_file, "cert_file": device.cert, "key_file": device.key}
    files[which] = tmp_path / "nowhere.pem"
    with pytest.raises(TlsFileError, match=rf"\[mqtt.tls\] {which} .*nowhere.pem does not exist"):
        mqtt_context(MqttTlsConfig(**files))


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path, ca: TestCA) -> None:
    one, other = ca.client(DEVICE), ca.client("dev-other")
    with pytest.raises(TlsFileError, match="cannot use the certificate"):
        mqtt_context(MqttTlsConfig(ca_file=ca.ca_file, cert_file=one.cert, key_file=other.key))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(TlsFileError, match="holds no PEM CA certificate"):
        mqtt_context(MqttTlsConfig(ca_file=not_pem))


def test_tls_is_off_unless_asked_for() -> None:
    assert mqtt_context(MqttTlsConfig()) is None
    context = mqtt_context(MqttTlsConfig(enabled=True))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
