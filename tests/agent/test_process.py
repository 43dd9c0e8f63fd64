"""``edgefleet agent run`` and ``python -m agent run`` as real processes: sd_notify, MQTT, commands."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from paho.mqtt import publish

from protocol.topics import Topics
from tests.agent.mqtt_watch import Watcher
from tests.agent.peer import FleetPeer
from tests.support.agent import DEVICE, Bundles
from tests.support.processes import ENTRY, AgentProcess, MosquittoBroker, agent_process
from tests.support.wait import WaitTimeoutError, wait_until

pytestmark = pytest.mark.slow

TOPICS = Topics()
RUNTIME = f"tflite-runtime {importlib.metadata.version('tflite-runtime')}"
"""The runtime the tests' agents run (``TEST_SETTINGS``) and its installed version, as a status names it."""


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
    """The sd_notify lines received until all of ``want`` have arrived (or the timeout: the caller
    asserts on what came)."""
    seen: set[str] = set()

    def all_seen() -> bool:
        with contextlib.suppress(TimeoutError):  # the socket's own 0.5 s timeout: look again
            seen.update(sock.recv(4096).decode().splitlines())
        return want <= seen

    with contextlib.suppress(WaitTimeoutError):
        wait_until(all_seen, f"sd_notify {sorted(want)}", timeout_s, interval_s=0)
    return seen


def _agent(
    tmp_path: Path, fleet_url: str, trusted: Path, mqtt_port: int, notify_path: str, *, module: str = ENTRY
) -> AgentProcess:
    """An agent process that notifies ``notify_path`` and expects a 400 ms watchdog, as under systemd."""
    return agent_process(
        tmp_path,
        fleet_url,
        trusted,
        mqtt_port=mqtt_port,
        env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": None},
        module=module,
    )


def test_agent_process_end_to_end(
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
    agent = _agent(tmp_path, fleet_peer.url, trusted_dir, broker.port, notify_path)
    agent.start()
    try:
        lines = _received(sock, {"READY=1", "WATCHDOG=1"}, 20)
        assert {"READY=1", "WATCHDOG=1"} <= lines, agent.log_text()
        assert any(line.startswith("STATUS=agent dev-1 serving on http://127.0.0.1:") for line in lines)
        # READY comes once the API listens; v1 arrives from the first check.
        agent.wait_for_version("1.0.0", timeout_s=20)
        online = status.wait_for(lambda m: m["presence"] == "online")
        assert online["runtime"] == RUNTIME, online  # what the fleet checks a deploy against
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
        agent.wait_for_version("2.0.0", timeout_s=20)
        assert _received(sock, {"WATCHDOG=1"}, 3) >= {"WATCHDOG=1"}  # still fed
        # Two updates later, the serving process has not loaded cryptography (the worker did).
        maps = Path(f"/proc/{agent.pid}/maps").read_text()
        assert "cryptography" not in maps and "_cffi_backend" not in maps

        # Killed without a goodbye: the broker publishes the last will, retained.
        agent.kill()
        status.wait_for(lambda m: m["presence"] == "offline")
    finally:
        agent.kill()
        status.close()
        events.close()
    late = Watcher(broker.host, broker.port, TOPICS.status(DEVICE))  # retained: a newcomer sees it
    try:
        retained = late.wait_for(lambda m: True)
        assert (retained["presence"], retained["runtime"]) == ("offline", RUNTIME), retained
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
    status = Watcher(broker.host, broker.port, TOPICS.status(DEVICE))
    telemetry = Watcher(broker.host, broker.port, TOPICS.telemetry(DEVICE))
    agent = _agent(tmp_path, fleet_peer.url, trusted_dir, broker.port, notify_path, module="agent")
    agent.start()
    try:
        assert "READY=1" in _received(sock, {"READY=1"}, 20)
        assert agent.health()["status"] == "no-model"
        status.wait_for(lambda m: m["presence"] == "online")
        assert not telemetry.messages  # interval 300 s

        # SIGHUP: the telemetry interval applies at once; a changed keepalive needs a restart.
        agent.configure({"telemetry": {"interval_s": 0.3}, "mqtt": {"keepalive_s": 7}})
        agent.send_signal(signal.SIGHUP)
        telemetry.wait_for(lambda m: m["seq"] >= 1)
        assert "SIGHUP: config reloaded; these need a restart to apply: mqtt.keepalive_s" in agent.log_text()

        # SIGTERM: a last window is written and flushed to the broker before the offline status.
        agent.configure({"telemetry": {"interval_s": 300}, "mqtt": {"keepalive_s": 5}})
        agent.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        seen = len(telemetry.messages)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
        assert "STOPPING=1" in _received(sock, {"STOPPING=1"}, 5)
        status.wait_for(lambda m: m["presence"] == "offline")
        wait_until(lambda: len(telemetry.messages) > seen, "the last window flushed at SIGTERM", 5)
        log = agent.log_text()
        assert "agent dev-1 serving on http://127.0.0.1:" in log and "(no model yet)" in log
        from agent.outbox import Outbox

        # Everything acknowledged before exit.
        assert len(Outbox(agent.state_dir / "outbox.sqlite")) == 0
    finally:
        agent.kill()
        status.close()
        telemetry.close()
