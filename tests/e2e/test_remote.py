"""Remote logs and remote configuration with real parts: a Mosquitto with the shipped ACL and
password file, ``fleet serve`` and ``agent run`` as processes, a real signed bundle over HTTP.

A log request is answered while the agent's update hangs in its download; an invalid remote
config is refused by the device (the old one stays, the reason reaches the fleet) and a valid one
is applied, reported and takes effect (telemetry every second instead of every five minutes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine

from edgefleet.mosquitto import MosquittoBroker
from edgefleet.stack import run_edgefleet
from fleet.auth import hash_secret
from fleet.provision import FLEET_BROKER_USER, acl_text
from fleet.storage.remote import set_config
from protocol.remote import RemoteConfig
from protocol.topics import Topics
from tests.agent.bundles import convert_to_tflite
from tests.support.agent import Bundles, exported_bundles, load_exported, make_bundles
from tests.support.fleet import shipped_listener_settings
from tests.support.processes import AgentProcess, FleetProcess
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

DEVICE = "dev-1"
DEVICE_SECRET = "device-secret-0123456789"
FLEET_PASSWORD = "fleet-password-0123456789"
TOPICS = Topics()


@pytest.fixture(scope="module")
def keyed_bundles(
    request: pytest.FixtureRequest, signing_keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Bundles, Path]:
    """The digits bundles and the public key they verify with (exported ones when given)."""
    exported = exported_bundles()
    if exported is not None:
        return load_exported(exported), exported / "operator.pub"
    digits_model: Path = request.getfixturevalue("digits_model")
    digits_v2: Path = request.getfixturevalue("digits_model_v2")
    out = tmp_path_factory.mktemp("remote-tflite")
    convert_to_tflite([(digits_model, "int8", out / "v1.tflite"), (digits_v2, "int8", out / "v2.tflite")])
    v1, v2 = (out / "v1.tflite").read_bytes(), (out / "v2.tflite").read_bytes()
    return make_bundles(v1, v2, digits_model, signing_keys[0]), signing_keys[1]


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """The shipped ACL and listener settings, a password file for the fleet and the device."""
    folder = tmp_path / "secure"
    folder.mkdir()
    passwd = folder / "passwd"
    passwd.write_text(
        f"{FLEET_BROKER_USER}:{hash_secret(FLEET_PASSWORD)}\n{DEVICE}:{hash_secret(DEVICE_SECRET)}\n"
    )
    acl = folder / "acl"
    acl.write_text(acl_text(TOPICS.prefix))
    extra = f"password_file {passwd}\nacl_file {acl}\n{shipped_listener_settings()}"
    with MosquittoBroker(folder / "mosquitto", extra_config=extra) as broker:
        yield broker


@contextmanager
def stack(
    tmp_path: Path, broker: MosquittoBroker, public: Path, env: dict[str, str | None] | None = None
) -> Iterator[tuple[FleetProcess, AgentProcess]]:
    password_file = tmp_path / "fleet-mqtt-password"
    password_file.write_text(FLEET_PASSWORD)
    fleet = FleetProcess(
        tmp_path / "fleet",
        broker.port,
        public,
        client_id=FLEET_BROKER_USER,  # the shipped listener takes the user name as the client id
        extra=["--mqtt-username", FLEET_BROKER_USER, "--mqtt-password-file", str(password_file)],
    )
    agent = AgentProcess(
        DEVICE,
        tmp_path / "devices",
        fleet.url,
        broker.port,
        public,
        telemetry_interval_s=300,
        poll_interval_s=2,
        settings={"mqtt": {"username": DEVICE, "password": DEVICE_SECRET}},
        env=env,
    )
    try:
        fleet.start_and_wait()
        fleet.wait_ingesting()
        agent.start_and_wait()
        wait_until(
            lambda: api(fleet, "GET", f"/devices/{DEVICE}")["presence"] == "online", "dev-1 online", 30, 0.2
        )
        yield fleet, agent
    finally:
        agent.stop()
        fleet.stop()


def api(fleet: FleetProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = requests.request(method, f"{fleet.url}/api/v1{path}", json=body, timeout=10)
    assert response.ok, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def fetch_log(fleet: FleetProcess, **ask: Any) -> dict[str, Any]:
    ticket = requests.post(f"{fleet.url}/api/v1/devices/{DEVICE}/logs", json=ask, timeout=10)
    assert ticket.status_code == 202, ticket.text
    request_id = ticket.json()["request_id"]

    def answered() -> dict[str, Any] | None:
        answer: dict[str, Any] = api(fleet, "GET", f"/devices/{DEVICE}/logs/{request_id}")
        return None if answer["state"] == "pending" else answer

    return wait_until(answered, "the device's log answer", 20, 0.2)


def test_a_log_request_is_answered_while_an_update_hangs(
    tmp_path: Path, secure_broker: MosquittoBroker, keyed_bundles: tuple[Bundles, Path]
) -> None:
    bundles, public = keyed_bundles
    with stack(tmp_path, secure_broker, public, env={"EDGEFLEET_FAULT_HANG_IN": "download"}) as (
        fleet,
        agent,
    ):
        pushed = requests.post(
            f"{fleet.url}/api/v1/models",
            data=bundles.v1,
            headers={"Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert pushed.status_code == 201, pushed.text
        api(fleet, "POST", "/deployments", {"name": "digits", "version": "1.0.0", "device_id": DEVICE})

        def in_download() -> bool:
            return any(e["state"] == "download" for e in api(fleet, "GET", f"/devices/{DEVICE}/events"))

        wait_until(in_download, "the update to reach (and hang in) download", 30, 0.2)

        answer = fetch_log(fleet, lines=500, level="info")
        assert answer["state"] == "done", answer
        assert answer["error"] is None
        text = answer["text"]
        assert answer["lines"] == len(text.splitlines()) > 0
        assert "update download: digits 1.0.0" in text  # the update's own progress, mid-update
        assert DEVICE_SECRET not in text

        only_warnings = fetch_log(fleet, lines=500, level="error")
        assert " INFO " not in (only_warnings["text"] or "")

        # The operator's command: the newest 3 lines, printed as the device sent them.
        printed = run_edgefleet(
            ["device", "logs", DEVICE, "--fleet", fleet.url, "--lines", "3", "--since", "10m"]
        )
        assert 1 <= len(printed.strip().splitlines()) <= 3

        # The update is still where it hung: answering did not move (or need) the update worker.
        states = [e["state"] for e in api(fleet, "GET", f"/devices/{DEVICE}/events")]
        assert "download" in states and "verify" not in states
        assert agent.serving_version() is None


def test_remote_config_refused_then_applied_and_in_effect(
    tmp_path: Path, secure_broker: MosquittoBroker, keyed_bundles: tuple[Bundles, Path]
) -> None:
    _, public = keyed_bundles
    with stack(tmp_path, secure_broker, public) as (fleet, agent):
        # Hostile input is refused at the API, naming the key; nothing is stored or sent.
        for settings, words in (
            ({"mqtt": {"host": "evil.example"}}, "mqtt: not a remotely settable section"),
            ({"telemetry": {"interval_s": 1, "bogus": 2}}, "telemetry.bogus: not remotely settable"),
            ({"telemetry": {"interval_s": -1}}, "telemetry.interval_s = -1"),
        ):
            refused = requests.put(
                f"{fleet.url}/api/v1/devices/{DEVICE}/config", json={"settings": settings}, timeout=10
            )
            assert refused.status_code == 400 and words in refused.json()["detail"], refused.text
        oversized = requests.post(
            f"{fleet.url}/api/v1/devices/{DEVICE}/logs", json={"lines": 10**6}, timeout=10
        )
        assert oversized.status_code == 422
        assert api(fleet, "GET", f"/devices/{DEVICE}/config")["desired"] is None

        # A valid config: applied, reported with its revision, and in effect (a window a second).
        windows_before = len(api(fleet, "GET", f"/devices/{DEVICE}/telemetry"))
        output = run_edgefleet(
            [
                "device",
                "config",
                DEVICE,
                "--fleet",
                fleet.url,
                "--set",
                "telemetry.interval_s=1",
                "--set",
                "log.level=debug",
            ]
        )
        assert DEVICE in output.split("notified:")[-1]
        good = api(fleet, "GET", f"/devices/{DEVICE}/config")["desired"]

        def report() -> dict[str, Any] | None:
            found: dict[str, Any] | None = api(fleet, "GET", f"/devices/{DEVICE}")["config"]
            return found

        applied = wait_until(
            lambda: (r := report()) and r["revision"] == good["revision"] and r, "applied", 20, 0.2
        )
        assert applied["outcome"] == "applied" and applied["applied_revision"] == good["revision"]
        wait_until(
            lambda: len(api(fleet, "GET", f"/devices/{DEVICE}/telemetry")) >= windows_before + 3,
            "telemetry every second",
            15,
            0.3,
        )
        shown = run_edgefleet(["device", "show", DEVICE, "--fleet", fleet.url])
        assert "config report applied" in shown and "in sync       yes" in shown

        # A config the device refuses (as from a fleet that did not check it): the old one stays.
        bad = RemoteConfig.of({"telemetry": {"interval_s": -5}})
        engine = create_engine(fleet.db_url)
        with engine.begin() as conn:
            set_config(conn, DEVICE, bad)
        engine.dispose()
        refusal = wait_until(
            lambda: (r := report()) and r["revision"] == bad.revision and r, "refusal", 20, 0.2
        )
        assert refusal["outcome"] == "refused"
        assert "telemetry.interval_s = -5" in refusal["reason"]
        assert refusal["applied_revision"] == good["revision"]
        count = len(api(fleet, "GET", f"/devices/{DEVICE}/telemetry"))
        wait_until(
            lambda: len(api(fleet, "GET", f"/devices/{DEVICE}/telemetry")) >= count + 2,
            "telemetry still every second (the refused config changed nothing)",
            15,
            0.3,
        )
        shown = run_edgefleet(["device", "show", DEVICE, "--fleet", fleet.url])
        assert "refused" in shown and "telemetry.interval_s = -5" in shown and "in sync       no" in shown

        assert agent.alive
        assert "refused remote config" in fetch_log(fleet, lines=2000, level="error")["text"]
