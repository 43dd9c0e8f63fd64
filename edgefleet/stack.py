"""Start and stop edgefleet's programs as real processes: the demo and the end-to-end tests use it.

Each program runs as ``python -m edgefleet.cli ...`` in its own process group so that stopping
the stack never leaves a stray process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import requests

from edgefleet.mosquitto import free_port
from protocol.errors import EdgefleetError


class StackError(EdgefleetError):
    """A program of the stack failed to start or to answer in time."""


def edgefleet_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgefleet.cli", *args]


def run_edgefleet(args: Sequence[str], log: Path | None = None, timeout_s: float = 600) -> str:
    """Run one edgefleet command to completion; StackError with its output when it fails."""
    completed = subprocess.run(
        edgefleet_command(*args), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    output = completed.stdout + completed.stderr
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ edgefleet {' '.join(args)}\n{output}\n")
    if completed.returncode != 0:
        raise StackError(
            f"`edgefleet {' '.join(args)}` failed (exit {completed.returncode}):\n{output.strip()}"
        )
    return output


def convert_digits(model_dir: Path, version: str, key: Path, bundle: Path, log: Path | None = None) -> str:
    """Convert a ``converter.examples digits`` folder to a signed int8 bundle with the real CLI.

    Returns the converter's report. Used by the demo, the end-to-end tests and the benchmarks.
    """
    return run_edgefleet(
        ["convert", str(model_dir / "model.keras"),
         "--calibration", str(model_dir / "calibration.npz"),
         "--evaluation", str(model_dir / "evaluation.npz"),
         "--labels", str(model_dir / "labels.txt"),
         "--mode", "int8", "--task", "classification",
         "--name", "digits", "--version", version,
         "--key", str(key), "--out", str(bundle)],
        log=log,
    )  # fmt: skip


class ManagedProcess:
    """A long-running edgefleet program with its output in a log file."""

    def __init__(
        self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            edgefleet_command(*self.args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(self.env or {})},
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until(self, check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise StackError(f"{self.name} exited while waiting for {what}:\n{self.tail()}")
            if check():
                return
            time.sleep(0.1)
        raise StackError(f"{self.name}: {what} did not happen within {timeout_s:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.alive:
            os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float = 15) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


class FleetProcess(ManagedProcess):
    def __init__(self, workdir: Path, mqtt_port: int, trusted_key: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_path = workdir / "fleet.db"
        super().__init__(
            "fleet",
            [
                "fleet",
                "serve",
                "--db",
                f"sqlite:///{self.db_path}",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--mqtt-host",
                "127.0.0.1",
                "--mqtt-port",
                str(mqtt_port),
                "--trusted-keys",
                str(trusted_key),
                "--artifacts",
                str(workdir / "artifacts"),
            ],
            workdir / "fleet.log",
        )

    def start_and_wait(self, timeout_s: float = 60) -> None:
        self.start()
        self.wait_until(lambda: http_ok(f"{self.url}/api/v1/health"), "the fleet API to answer", timeout_s)


class AgentProcess(ManagedProcess):
    def __init__(
        self,
        device_id: str,
        workdir: Path,
        fleet_url: str,
        mqtt_port: int,
        trusted_key: Path,
        *,
        telemetry_interval_s: float = 2,
        poll_interval_s: float = 30,
        probation_s: float | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.device_id = device_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = workdir / device_id / "state"
        self.config_path = workdir / device_id / "agent.toml"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f'device_id = "{device_id}"\n'
            f'state_dir = "{self.state_dir}"\n'
            f'trusted_keys = ["{trusted_key}"]\n'
            f'[fleet]\nurl = "{fleet_url}"\npoll_interval_s = {poll_interval_s}\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
            f'[api]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f"[telemetry]\ninterval_s = {telemetry_interval_s}\n"
            + (f"[update]\nprobation_s = {probation_s}\n" if probation_s is not None else "")
        )
        super().__init__(
            device_id,
            ["agent", "run", "--config", str(self.config_path)],
            workdir / device_id / "agent.log",
            env,
        )

    def start_and_wait(self, timeout_s: float = 60) -> None:
        self.start()
        self.wait_until(lambda: http_ok(f"{self.url}/v1/health"), "the agent API to answer", timeout_s)

    def health(self) -> dict[str, object]:
        response = requests.get(f"{self.url}/v1/health", timeout=2)
        body: dict[str, object] = response.json()
        return body

    def serving_version(self) -> str | None:
        try:
            model = self.health().get("model")
        except (requests.RequestException, ValueError):
            return None
        return str(model["version"]) if isinstance(model, dict) and "version" in model else None

    def wait_for_version(self, version: str, timeout_s: float = 90) -> None:
        self.wait_until(lambda: self.serving_version() == version, f"model {version} to serve", timeout_s)
