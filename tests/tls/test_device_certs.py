"""``edgefleet device add --ca-cert/--ca-key`` issues the device's client certificate, and the agent
connects with it to a broker that requires one."""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.mqtt_link import MqttLink
from agent.outbox import Outbox
from agent.tls import mqtt_context
from edgefleet.cli import main
from edgefleet.mosquitto import BrokerTls, MosquittoBroker
from fleet.device_certs import DeviceCertError, issue_device_cert
from protocol.topics import Topics
from tests.support.certs import TestCA
from tests.support.fleet import RunningFleet, fleet_config, running_fleet


@pytest.fixture
def fleet(tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]) -> Iterator[RunningFleet]:
    with running_fleet(fleet_config(tmp_path, broker, signing_keys)) as running:
        yield running


def test_device_add_issues_a_certificate_the_broker_accepts(
    tmp_path: Path, fleet: RunningFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = TestCA(tmp_path / "pki")
    out = tmp_path / "out"
    argv = ["device", "add", "dev-cert", "--fleet", fleet.url, "--out", str(out)]
    assert main([*argv, "--ca-cert", str(ca.ca_file), "--ca-key", str(ca.files.key)]) == 0
    assert "client certificate (CN=dev-cert)" in capsys.readouterr().out
    cert, key = out / "dev-cert.crt", out / "dev-cert.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    config = parse_config(tomllib.loads((out / "dev-cert-agent.toml").read_text()))
    assert config.mqtt.tls.cert_file == Path("/etc/edgefleet/dev-cert.crt")
    assert config.mqtt.tls.ca_file == Path("/etc/edgefleet/ca.crt")

    server = ca.server()
    tls = BrokerTls(
        ca.ca_file, server.cert, server.key, require_certificate=True, use_identity_as_username=True
    )
    with MosquittoBroker(tmp_path / "tls-broker", tls=tls) as tls_broker:
        files = config.mqtt.tls.model_copy(
            update={"ca_file": out / "ca.crt", "cert_file": cert, "key_file": key}
        )
        link = MqttLink(
            "dev-cert",
            tls_broker.host,
            tls_broker.port,
            Topics("edgefleet/v1"),
            agent_version="test",
            status=lambda: (None, None, None),
            on_check_update=lambda: None,
            outbox=Outbox(tmp_path / f"outbox-{uuid.uuid4().hex[:6]}.sqlite", limit=10),
            tls=mqtt_context(files),
        ).start()
        try:
            assert link.connected.wait(10), f"the issued certificate was refused: {link.last_error}"
        finally:
            link.stop()


def test_a_ca_key_that_is_not_the_ca_certificates_is_refused(tmp_path: Path) -> None:
    ca, other = TestCA(tmp_path / "pki"), TestCA(tmp_path / "other", "other")
    with pytest.raises(DeviceCertError, match="is not the key of --ca-cert"):
        issue_device_cert(ca.ca_file, other.files.key, "dev-1", tmp_path / "out")
    with pytest.raises(DeviceCertError, match=r"nowhere\.key"):
        issue_device_cert(ca.ca_file, tmp_path / "nowhere.key", "dev-1", tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is written when the CA is unusable"


def test_ca_options_need_each_other_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = TestCA(tmp_path / "pki")
    assert (
        main(["device", "add", "dev-1", "--fleet", "http://127.0.0.1:1", "--ca-cert", str(ca.ca_file)]) == 2
    )
    assert "--ca-cert and --ca-key go together" in capsys.readouterr().err
