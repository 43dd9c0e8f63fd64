"""The operator CLI against a real fleet over HTTP, and ``fleet serve`` as a real process."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import psutil
import pytest
import requests

from edgefleet.mosquitto import MosquittoBroker, free_port
from fleet.__main__ import main as fleet_main
from protocol.topics import Topics
from tests.fleet.bundles import build_bundle
from tests.fleet.mqtt_helpers import TestClient, status, telemetry, wait_for
from tests.support.fleet import RunningFleet
from tests.support.processes import FleetProcess


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = fleet_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_register_adds_the_subcommands() -> None:
    from fleet.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["model", "deploy", "digits", "1.0.0", "--device", "pi-1", "--fleet", "http://x"]
    )
    assert (args.name, args.version, args.device, args.fleet) == ("digits", "1.0.0", "pi-1", "http://x")


def test_push_list_deploy_and_device_list(
    fleet: RunningFleet,
    device: TestClient,
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = tmp_path / "digits-1.0.0.bundle"
    bundle.write_bytes(build_bundle(signing_keys[0], "digits", "1.0.0"))
    url = ("--fleet", fleet.url)

    code, out, _ = run(capsys, "model", "push", str(bundle), *url)
    assert code == 0 and out.startswith("stored: digits 1.0.0")
    code, out, _ = run(capsys, "model", "push", str(bundle), *url)
    assert code == 0 and out.startswith("already stored: digits 1.0.0")

    other = tmp_path / "other.bundle"
    other.write_bytes(build_bundle(signing_keys[0], "digits", "1.0.0"))
    code, _, err = run(capsys, "model", "push", str(other), *url)
    assert code == 2 and "409" in err and "already stored" in err and len(err.strip().splitlines()) == 1

    code, out, _ = run(capsys, "model", "list", *url)
    assert code == 0 and "digits" in out and "1.0.0" in out and "int8" in out

    topics = Topics()
    device.publish(topics.status("pi-9"), status("pi-9"), retain=True)
    device.publish(topics.telemetry("pi-9"), telemetry("pi-9", p50=4.0, cpu=12.0))
    wait_for(lambda: (fleet.json("/api/v1/devices") or [{}])[0].get("telemetry"))

    code, out, _ = run(capsys, "model", "deploy", "digits", "1.0.0", "--device", "pi-9", *url)
    assert code == 0 and "device pi-9" in out and "notified: pi-9" in out
    code, _, err = run(capsys, "model", "deploy", "digits", "7.0.0", *url)
    assert code == 2 and "404" in err and "no model digits 7.0.0" in err

    code, out, _ = run(capsys, "device", "list", *url)
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("pi-9"))
    assert "online" in line and "digits 1.0.0" in line and "4.0/8.0/12.0" in line and "12.0%" in line


def test_unreachable_fleet_is_one_line_naming_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "model", "list", "--fleet", url)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and url in err


def test_fleet_url_from_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("EDGEFLEET_FLEET_URL", url)
    code, _, err = run(capsys, "device", "list")
    assert code == 2 and url in err


@pytest.mark.parametrize(
    ("writer", "logged"),
    [
        ("auto", "ingest writer: a child process"),
        ("thread", "ingest writer: a thread (the writer setting asks for a thread)"),
    ],
)
def test_serve_process_logs_ready_and_stops_on_sigterm(
    tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path], writer: str, logged: str
) -> None:
    fleet = FleetProcess(
        tmp_path,
        broker.port,
        signing_keys[1],
        mqtt_host=broker.host,
        client_id="fleet-serve-test",
        extra=("--ingest-writer", writer),
        module="fleet",
    )
    port = fleet.port
    fleet.start()
    try:
        fleet.wait_for_log(f"fleet listening on http://127.0.0.1:{port}", 20)
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5).json() == {"ok": True}
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200 and "/static/app.js" in page.text
        script = requests.get(f"http://127.0.0.1:{port}/static/app.js", timeout=5).text
        assert "/api/v1/devices" in script and "2000" in script
        fleet.wait_ingesting(10)
        fleet.wait_for_log(logged, 20)
        helpers = psutil.Process(fleet.process.pid).children(recursive=True)
        assert bool(helpers) == (writer == "auto")  # the writer and the fork server it came from
        fleet.send_signal(signal.SIGTERM)
        assert fleet.wait(20) == 0, fleet.log_text()
    finally:
        fleet.kill()
    text = fleet.log_text()
    assert "fleet stopped" in text and "Traceback" not in text, text
    _, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive, f"left running after the fleet stopped: {alive}"


def test_serve_without_keys_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "keys"
    empty.mkdir()
    code, _, err = run(
        capsys, "fleet", "serve", "--trusted-keys", str(empty), "--db", f"sqlite:///{tmp_path / 'f.db'}"
    )
    assert code == 2 and "no public keys" in err


def test_rollout_device_add_and_model_delete_commands(
    fleet: RunningFleet,
    device: TestClient,
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fleet.auth import parse_tokens

    fleet.server.context.tokens = parse_tokens(
        "admin ada admin-token-0123456789\nviewer vera viewer-token-0123456789"
    )
    url = ("--fleet", fleet.url, "--token", "admin-token-0123456789")
    for version in ("1.0.0", "2.0.0"):
        bundle = tmp_path / f"digits-{version}.bundle"
        bundle.write_bytes(build_bundle(signing_keys[0], "digits", version))
        assert run(capsys, "model", "push", str(bundle), *url)[0] == 0
    for device_id in ("pi-1", "pi-2"):
        device.publish(Topics().status(device_id), status(device_id), retain=True)
    wait_for(lambda: len(fleet.json_auth("/api/v1/devices", "admin-token-0123456789")) == 2)

    code, _, err = run(capsys, "rollout", "status", "--fleet", fleet.url)
    assert code == 2 and "401" in err
    code, out, _ = run(
        capsys,
        "device",
        "add",
        "pi-3",
        "--group",
        "line-1",
        "--tag",
        "cam",
        "--out",
        str(tmp_path / "p"),
        *url,
    )
    assert code == 0 and "pi-3:$7$101$" in out and "pattern write edgefleet/v1/devices/%u/status" in out
    assert (tmp_path / "p" / "pi-3-agent.toml").read_text().count('username = "pi-3"') == 1

    code, out, _ = run(
        capsys,
        "rollout",
        "start",
        "digits",
        "2.0.0",
        "--all",
        "--soak",
        "120",
        "--gate",
        "max_error_rate=0.01",
        *url,
    )
    assert code == 0 and out.startswith(
        "rollout 1 of digits 2.0.0 started: 2 devices, waves [1, 2], soak 120 s"
    )
    viewer = ("--fleet", fleet.url, "--token", "viewer-token-0123456789")
    code, out, _ = run(capsys, "rollout", "status", *viewer)
    assert code == 0 and "running" in out and "1/2" in out
    code, _, err = run(capsys, "rollout", "pause", "1", *viewer)
    assert code == 2 and "403" in err
    assert run(capsys, "rollout", "pause", "1", *url)[1].startswith("rollout 1: paused")
    assert run(capsys, "rollout", "resume", "1", *url)[1].startswith("rollout 1: running")
    code, out, _ = run(capsys, "rollout", "abort", "1", "--reason", "not today", *url)
    assert code == 0 and "aborted (not today)" in out
    code, out, _ = run(capsys, "rollout", "status", "1", *url)
    assert "aborted" in out

    code, _, err = run(capsys, "model", "delete", "digits", "2.0.0", *url)
    assert code == 2 and "409" in err and "desired by" in err
    assert run(capsys, "model", "delete", "digits", "1.0.0", *url)[0] == 0
