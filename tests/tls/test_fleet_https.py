"""``fleet serve --tls-cert/--tls-key`` serves HTTPS, and the agent reads its desired state and
downloads its bundle over it, verifying the fleet against ``[fleet] ca_file``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from agent.config import MqttTlsConfig
from agent.errors import DownloadError
from agent.mqtt_link import MqttLink
from agent.outbox import Outbox
from agent.store import ModelStore
from agent.tls import TlsFileError, mqtt_context
from agent.update.runner import WorkerRunner
from edgefleet.mosquitto import BrokerTls, MosquittoBroker, wait_for_port
from fleet.config import FleetConfig
from fleet.tls import TlsSetupError, check_server_files, mqtt_client_context
from protocol.topics import Topics
from tests.fleet.bundles import build_bundle
from tests.support.certs import TestCA
from tests.support.fleet import fleet_config, running_fleet
from tests.support.processes import FleetProcess
from tests.support.updater import worker_runner
from tests.support.wait import wait_until

DEVICE = "dev-https"


@dataclass
class HttpsFleet:
    url: str
    ca: TestCA
    log: Path


@pytest.fixture
def https_fleet(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> Iterator[HttpsFleet]:
    ca = TestCA(tmp_path / "pki")
    server = ca.server(hosts=("127.0.0.1", "localhost"))
    fleet = FleetProcess(
        tmp_path,
        broker.port,
        signing_keys[1],
        extra=["--tls-cert", str(server.cert), "--tls-key", str(server.key)],
        module="fleet",
    )
    fleet.start()
    try:
        assert wait_for_port("127.0.0.1", fleet.port, 30), fleet.tail()
        yield HttpsFleet(f"https://127.0.0.1:{fleet.port}", ca, fleet.log_path)
    finally:
        fleet.stop()


def _runner(tmp_path: Path, fleet_url: str, ca_file: Path) -> WorkerRunner:
    ModelStore(tmp_path / "state").open()
    (tmp_path / "trusted").mkdir(exist_ok=True)
    return worker_runner(
        tmp_path / "state", tmp_path / "trusted", fleet_url, device_id=DEVICE, timeout_s=10, ca_file=ca_file
    )


def test_the_agent_reads_its_desired_state_and_bundle_over_https(
    tmp_path: Path, https_fleet: HttpsFleet, signing_keys: tuple[Path, Path]
) -> None:
    verify = str(https_fleet.ca.ca_file)
    bundle = build_bundle(signing_keys[0], "digits", "1.0.0")
    pushed = requests.post(
        f"{https_fleet.url}/api/v1/models",
        data=bundle,
        headers={"Content-Type": "application/octet-stream"},
        verify=verify,
        timeout=30,
    )
    assert pushed.status_code == 201, pushed.text
    deployed = requests.post(
        f"{https_fleet.url}/api/v1/deployments",
        json={"name": "digits", "version": "1.0.0", "device_id": DEVICE},
        verify=verify,
        timeout=30,
    )
    assert deployed.status_code == 200, deployed.text

    runner = _runner(tmp_path, https_fleet.url, https_fleet.ca.ca_file)
    target = runner.fetch_desired().model
    assert target is not None and (target.name, target.version) == ("digits", "1.0.0")
    assert target.url.startswith(f"{https_fleet.url}/"), "the fleet hands out https bundle URLs"
    runner.download(target, tmp_path / "digits.bundle", attempts=1, base_delay_s=0)
    assert hashlib.sha256((tmp_path / "digits.bundle").read_bytes()).hexdigest() == target.sha256


def test_a_fleet_certificate_from_another_ca_is_refused_in_words(
    tmp_path: Path, https_fleet: HttpsFleet
) -> None:
    other = TestCA(tmp_path / "other-pki", "other")
    runner = _runner(tmp_path, https_fleet.url, other.ca_file)
    with pytest.raises(DownloadError, match="TLS: the fleet was refused: its certificate is not trusted"):
        runner.fetch_desired()


def test_plain_http_to_the_https_fleet_fails(tmp_path: Path, https_fleet: HttpsFleet) -> None:
    runner = _runner(tmp_path, https_fleet.url.replace("https://", "http://"), https_fleet.ca.ca_file)
    with pytest.raises(DownloadError, match="cannot read the desired state"):
        runner.fetch_desired()


def test_tls_files_of_the_fleet_and_the_agent_are_checked_first(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    server, other = ca.server(), ca.server("other")
    with pytest.raises(TlsSetupError, match=r"--tls-key .*nowhere.key does not exist"):
        check_server_files(server.cert, tmp_path / "nowhere.key")
    with pytest.raises(TlsSetupError, match="cannot serve HTTPS with the certificate"):
        check_server_files(server.cert, other.key)
    with pytest.raises(TlsFileError, match=r"\[fleet\] ca_file .*nowhere.pem does not exist"):
        _runner(tmp_path, "https://127.0.0.1:1", tmp_path / "nowhere.pem")
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        FleetConfig(trusted_keys=[tmp_path], tls_cert_file=server.cert)
    https = FleetConfig(
        trusted_keys=[tmp_path], port=8443, tls_cert_file=server.cert, tls_key_file=server.key
    )
    assert https.base_url() == "https://127.0.0.1:8443"


def test_the_fleet_ingests_over_tls_what_a_device_publishes_with_its_certificate(
    tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.server()
    tls = BrokerTls(
        ca.ca_file, server.cert, server.key, require_certificate=True, use_identity_as_username=True
    )
    with MosquittoBroker(tmp_path / "tls-broker", tls=tls) as broker:
        fleet_cert, device_cert = ca.client("edgefleet-fleet"), ca.client(DEVICE)
        base = fleet_config(tmp_path, broker, signing_keys)
        mqtt = base.mqtt.model_copy(
            update={"ca_file": ca.ca_file, "cert_file": fleet_cert.cert, "key_file": fleet_cert.key}
        )
        with running_fleet(base.model_copy(update={"mqtt": mqtt})) as fleet:
            device_tls = MqttTlsConfig(
                ca_file=ca.ca_file, cert_file=device_cert.cert, key_file=device_cert.key
            )
            link = MqttLink(
                DEVICE,
                broker.host,
                broker.port,
                Topics("edgefleet/v1"),
                agent_version="test",
                status=lambda: (None, None, None),
                on_check_update=lambda: None,
                outbox=Outbox(tmp_path / "outbox.sqlite", limit=10),
                tls=mqtt_context(device_tls),
            ).start()
            try:
                assert link.connected.wait(10), str(link.last_error)
                seen = wait_until(
                    lambda: [d for d in fleet.json("/api/v1/devices") if d["device_id"] == DEVICE],
                    "the fleet to ingest the device's status over TLS",
                    15,
                )
                assert seen[0]["presence"] == "online"
            finally:
                link.stop()


def test_the_fleets_broker_tls_files_are_checked(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    with pytest.raises(TlsSetupError, match=r"--mqtt-ca .*nowhere\.pem does not exist"):
        mqtt_client_context(tmp_path / "nowhere.pem", None, None)
    one, other = ca.client("a"), ca.client("b")
    with pytest.raises(TlsSetupError, match="cannot use the certificate"):
        mqtt_client_context(ca.ca_file, one.cert, other.key)
