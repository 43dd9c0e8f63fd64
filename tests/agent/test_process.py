"""``edgefleet agent run`` and ``python -m agent run`` as real processes: sd_notify, MQTT, commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from paho.mqtt import publish

from edgefleet.mosquitto import MosquittoBroker, free_port
from protocol.topics import Topics
from tests.agent.conftest import DEVICE, Bundles, config_toml
from tests.agent.mqtt_watch import Watcher
from tests.agent.peer import FleetPeer

pytestmark = pytest.mark.slow

TOPICS = Topics()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    folder = tempfile.mkdtemp(prefix="ef-", dir="/tmp")  # AF_UNIX paths must be short
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    yield sock, path
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)


def _received(sock: socket.socket, want: set[str], timeout_s: float) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not want <= seen:
        try:
            seen.update(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            continue
    return seen


def _start_agent(
    tmp_path: Path, config: str, notify_path: str, entry: tuple[str, ...] = ("-m", "edgefleet.cli", "agent")
) -> tuple[subprocess.Popen[bytes], int]:
    api_port = free_port()
    path = tmp_path / "agent.toml"
    path.write_text(config.replace("port = 0", f"port = {api_port}"))
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000", "PYTHONPATH": str(ROOT)}
    env.pop("WATCHDOG_PID", None)
    with open(tmp_path / "agent.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, *entry, "run", "--config", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return process, api_port


def _health(port: int) -> dict[str, Any]:
    return dict(requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).json())


def _version(port: int) -> str | None:
    model = _health(port)["model"]
    return str(model["version"]) if model else None


def _wait(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_agent_process_end_to_end(  # noqa: PLR0917 - pytest fixtures
    tmp_path: Path,
    broker: MosquittoBroker,
    fleet_peer: FleetPeer,
    trusted_dir: Path,
    bundles: Bundles,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, notify_path = notify_socket
    fleet_peer.deploy(DEVICE, bundles.v1, "digits", "1.0.0")
    status = Watcher(broker.host, broker.port, TOPICS.status(DEVICE))
    events = Watcher(broker.host, broker.port, TOPICS.events(DEVICE))
    config = config_toml(tmp_path / "state", trusted_dir, fleet_peer.url, mqtt_port=broker.port)
    process, port = _start_agent(tmp_path, config, notify_path)
    try:
        lines = _received(sock, {"READY=1", "WATCHDOG=1"}, 20)
        assert {"READY=1", "WATCHDOG=1"} <= lines, (tmp_path / "agent.log").read_text()
        assert any(line.startswith("STATUS=agent dev-1 serving on http://127.0.0.1:") for line in lines)
        # READY comes once the API listens; v1 arrives from the first check.
        _wait(lambda: _version(port) == "1.0.0")
        status.wait_for(lambda m: m["presence"] == "online")
        events.wait_for(lambda m: m["state"] == "commit" and m["target"]["version"] == "1.0.0")

        # The fleet deploys v2 and says so on the command topic: the agent checks at once
        # (the poll interval is 300 s).
        # STATUS= follows the serving model and the update state.
        assert any(
            line.startswith("STATUS=serving digits 1.0.0; update idle")
            for line in _received(sock, {"STATUS=serving digits 1.0.0; update idle; outbox 0"}, 10)
        )
        fleet_peer.deploy(DEVICE, bundles.v2, "digits", "2.0.0")
        command = {
            "kind": "command",
            "schema_version": 1,
            "command": "check-update",
            "command_id": "c1",
            "issued_at": datetime.now(UTC).isoformat(),
        }
        publish.single(TOPICS.cmd(DEVICE), json.dumps(command), qos=1, hostname=broker.host, port=broker.port)
        _wait(lambda: _version(port) == "2.0.0")
        assert _received(sock, {"WATCHDOG=1"}, 3) >= {"WATCHDOG=1"}  # still fed
        # Two updates later, the serving process has not loaded cryptography (the worker did).
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "cryptography" not in maps and "_cffi_backend" not in maps

        # Killed without a goodbye: the broker publishes the last will, retained.
        process.kill()
        process.wait(10)
        status.wait_for(lambda m: m["presence"] == "offline")
    finally:
        if process.poll() is None:
            process.kill()
        status.close()
        events.close()
    late = Watcher(broker.host, broker.port, TOPICS.status(DEVICE))  # retained: a newcomer sees it
    try:
        assert late.wait_for(lambda m: True)["presence"] == "offline"
    finally:
        late.close()


def test_sighup_reloads_and_sigterm_flushes_and_says_offline(
    tmp_path: Path,
    broker: MosquittoBroker,
    fleet_peer: FleetPeer,
    trusted_dir: Path,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, notify_path = notify_socket
    state = tmp_path / "state"
    config = config_toml(state, trusted_dir, fleet_peer.url, mqtt_port=broker.port)
    status = Watcher(broker.host, broker.port, TOPICS.status(DEVICE))
    telemetry = Watcher(broker.host, broker.port, TOPICS.telemetry(DEVICE))
    process, port = _start_agent(tmp_path, config, notify_path, entry=("-m", "agent"))
    try:
        assert "READY=1" in _received(sock, {"READY=1"}, 20)
        assert _health(port)["status"] == "no-model"
        status.wait_for(lambda m: m["presence"] == "online")
        assert not telemetry.messages  # interval 300 s

        # SIGHUP: the telemetry interval applies at once; a changed keepalive needs a restart.
        path = tmp_path / "agent.toml"
        text = path.read_text().replace("interval_s = 300", "interval_s = 0.3")
        path.write_text(text.replace("keepalive_s = 5", "keepalive_s = 7"))
        process.send_signal(signal.SIGHUP)
        telemetry.wait_for(lambda m: m["seq"] >= 1)
        log = (tmp_path / "agent.log").read_text()
        assert "SIGHUP: config reloaded; these need a restart to apply: mqtt.keepalive_s" in log

        # SIGTERM: a last window is written and flushed to the broker before the offline status.
        path.write_text(text.replace("interval_s = 0.3", "interval_s = 300"))
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        seen = len(telemetry.messages)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert "STOPPING=1" in _received(sock, {"STOPPING=1"}, 5)
        status.wait_for(lambda m: m["presence"] == "offline")
        _wait(lambda: len(telemetry.messages) > seen, 5)
        log = (tmp_path / "agent.log").read_text()
        assert "agent dev-1 serving on http://127.0.0.1:" in log and "(no model yet)" in log
        from agent.outbox import Outbox

        assert len(Outbox(state / "outbox.sqlite")) == 0  # everything acknowledged before exit
    finally:
        if process.poll() is None:
            process.kill()
        status.close()
        telemetry.close()
