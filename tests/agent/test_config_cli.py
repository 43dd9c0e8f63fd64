"""Config loading, ``check-config``, the docs' config reference, sd_notify and the light import path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.__main__ import main
from agent.config_reference import reference_markdown
from agent.systemd import Notifier
from tests.support.toml import config_toml
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_check_config_ok(tmp_path: Path, trusted_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_toml(tmp_path / "state", trusted_dir, "http://127.0.0.1:8080"))
    assert main(["check-config", "--config", str(path)]) == 0
    assert "config OK" in capsys.readouterr().out


def test_check_config_names_each_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'device_id = "bad id!"\n[fleet]\nurl = "ftp://x"\n[mqtt]\nport = 70000\ncolour = "red"\n'
        '[runtime]\nkind = "tensorflow"\n'
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    for where in (
        "device_id = 'bad id!': String should match pattern",
        "fleet.url = 'ftp://x':",
        "mqtt.colour: unknown key; [mqtt] takes: host, port,",
        "mqtt.port = 70000: Input should be less than or equal to 65535 (MQTT broker TCP port.)",
        "runtime.kind = 'tensorflow': Input should be 'auto', 'tflite-runtime' or 'litert'",
    ):
        assert where in err


def test_check_config_bad_toml_and_missing_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("device_id = \n")
    assert main(["check-config", "--config", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    path.write_text('device_id = "d"\ntrusted_keys = ["/nonexistent/k.pub"]\n[fleet]\nurl = "http://f"\n')
    assert main(["check-config", "--config", str(path)]) == 2
    assert "trusted_keys" in capsys.readouterr().err
    assert main(["check-config", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_environment_overrides_the_file(tmp_path: Path, trusted_dir: Path) -> None:
    from agent.config import load_config
    from agent.errors import ConfigError

    path = tmp_path / "agent.toml"
    path.write_text(config_toml(tmp_path / "state", trusted_dir, "http://127.0.0.1:8080"))
    env = {
        "EDGEFLEET_AGENT_DEVICE_ID": "dev-9",
        "EDGEFLEET_AGENT_MQTT__HOST": "broker.local",
        "EDGEFLEET_AGENT_MQTT__PORT": "8883",
        "EDGEFLEET_AGENT_API__UNIX_SOCKET": "/run/edgefleet/agent.sock",
        "EDGEFLEET_AGENT_UPDATE__PROBATION_S": "120",
        "EDGEFLEET_OTHER": "ignored",
    }
    config = load_config(path, env)
    assert (config.device_id, config.mqtt.host, config.mqtt.port) == ("dev-9", "broker.local", 8883)
    assert str(config.api.unix_socket) == "/run/edgefleet/agent.sock"
    assert config.update.probation_s == 120 and config.fleet.url == "http://127.0.0.1:8080"
    with pytest.raises(ConfigError) as bad:
        load_config(path, {"EDGEFLEET_AGENT_MQTT__PORTT": "1", "EDGEFLEET_AGENT_API__PORT": "x"})
    text = str(bad.value)
    assert "EDGEFLEET_AGENT_* overrides" in text and "mqtt.portt: unknown key" in text
    assert "api.port = 'x'" in text


def test_docs_carry_the_generated_config_reference() -> None:
    docs = (ROOT / "docs" / "agent.md").read_text()
    regenerate = "python -c 'from agent.config_reference import reference_markdown'"
    assert reference_markdown() in docs, f"regenerate: {regenerate}"


def test_notifier_abstract_socket_and_unset() -> None:
    name = f"edgefleet-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        assert notifier.watchdog_s == 1.0
        assert notifier.ready("up")
        assert sock.recv(1024) == b"READY=1\nSTATUS=up"
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.watchdog() and quiet.watchdog_s is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


def test_importing_the_agent_stays_light() -> None:
    modules = [
        "agent",
        "agent.app",
        "agent.cli",
        "agent.config",
        "agent.errors",
        "agent.http_api",
        "agent.mqtt_link",
        "runtime",
        "agent.serving",
        "agent.store",
        "agent.systemd",
        "agent.telemetry",
        "agent.update",
        "agent.update.machine",
        "agent.update.record",
        "agent.update.steps",
        "agent.update.updater",
        "agent.__main__",
    ]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "from runtime import load_model\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'tensorflow', 'keras', 'fastapi', 'uvicorn', 'starlette', 'sqlalchemy'})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout}"


def test_the_edgefleet_command_line_stays_light_for_the_agent() -> None:
    """``edgefleet agent run`` builds the whole parser: no part may import heavy modules for it."""
    script = (
        "import sys\n"
        "from edgefleet.cli import build_parser\n"
        "build_parser().parse_args(['agent', 'check-config', '--config', 'x'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'tensorflow', 'keras', 'fastapi', 'uvicorn', 'starlette', 'sqlalchemy'})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout}"


def test_interval_jobs_run_trigger_and_replan() -> None:
    import threading
    import time

    from agent.scheduler import IntervalJob

    ran = threading.Event()
    count = [0]

    def action() -> None:
        count[0] += 1
        ran.set()

    job = IntervalJob("t", 3600, action).start()
    try:
        time.sleep(0.05)
        assert count[0] == 0  # not at start unless asked
        job.trigger()
        assert ran.wait(5) and count[0] == 1
        job.set_interval(0.01)  # a shorter interval applies at once
        wait_until(lambda: count[0] >= 3, "three runs at the shorter interval", 5, interval_s=0.01)
    finally:
        job.stop()
    stopped_at = count[0]
    time.sleep(0.05)
    assert count[0] == stopped_at

    failing = IntervalJob("f", 0.01, lambda: 1 / 0, run_at_start=True).start()  # errors are logged
    time.sleep(0.05)
    failing.stop()
    assert failing.runs >= 2


def test_password_file_reads_a_systemd_credential(tmp_path: Path, trusted_dir: Path) -> None:
    from agent.config import fleet_credentials, load_config

    credentials = tmp_path / "credentials"  # what systemd's LoadCredential= hands the service
    credentials.mkdir()
    (credentials / "mqtt-password").write_text("broker-secret\n")
    absolute = tmp_path / "fleet-secret"
    absolute.write_text("fleet-secret")
    settings = {"mqtt": {"username": "dev-1", "password_file": "mqtt-password"}}
    path = tmp_path / "agent.toml"
    path.write_text(config_toml(tmp_path / "state", trusted_dir, "http://f", settings=settings))
    config = load_config(path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.mqtt.password == "broker-secret"  # the trailing newline of the file is not part of it
    assert fleet_credentials(config) == ("dev-1", "broker-secret")
    settings["fleet"] = {"password_file": str(absolute)}  # an absolute path needs no credentials folder
    path.write_text(config_toml(tmp_path / "state", trusted_dir, "http://f", settings=settings))
    config = load_config(path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert fleet_credentials(config) == ("dev-1", "fleet-secret")
    assert config.mqtt.password == "broker-secret"


@pytest.mark.parametrize(
    ("section", "environ", "error"),
    [
        ({"password_file": "mqtt-password"}, {}, "$CREDENTIALS_DIRECTORY is not set"),
        ({"password_file": "other"}, None, "cannot read {creds}/other: No such file or directory (is "),
        ({"password_file": "mqtt-password", "password": "p"}, None, "mutually exclusive"),
        ({"password_file": "empty"}, None, "must hold one non-empty line"),
    ],
)
def test_password_file_problems_are_named(
    tmp_path: Path,
    trusted_dir: Path,
    *,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    section: dict[str, str],
    environ: dict[str, str] | None,
    error: str,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt-password").write_text("s")
    (credentials / "empty").write_text("\n")
    if environ is None:
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    else:
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for name in ("mqtt", "fleet"):
        path = tmp_path / "agent.toml"
        path.write_text(config_toml(tmp_path / "state", trusted_dir, "http://f", settings={name: section}))
        assert main(["check-config", "--config", str(path)]) == 2
        assert f"{name}: Value error, " in (err := capsys.readouterr().err)
        assert error.format(creds=credentials) in err
