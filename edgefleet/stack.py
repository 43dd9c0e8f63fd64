"""Start and stop edgefleet's programs as real processes: the one launcher of ``fleet serve`` and
``agent run`` that the demo, the benchmarks and the tests (through ``tests/support/processes.py``)
use.

Each program runs as ``python -m edgefleet.cli ...`` in its own process group so that stopping
the stack never leaves a stray process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from signal import Signals
from typing import IO, Any, TypeVar

import requests

from edgefleet.agent_toml import Settings, agent_settings, merged, write_agent_toml
from edgefleet.mosquitto import free_port
from edgefleet.wait import WaitTimeoutError, wait_until
from protocol.errors import EdgefleetError


class StackError(EdgefleetError):
    """A program of the stack failed to start or to answer in time."""


T = TypeVar("T")

ENTRY = "edgefleet.cli"
"""The module every program is started through by default (``python -m edgefleet.cli ...``). A
device runs ``python -m agent run ...`` instead, and ``python -m fleet fleet serve ...`` is the
fleet's own entry point: pass ``module="agent"`` or ``module="fleet"``."""


def edgefleet_command(*args: str, module: str = ENTRY) -> list[str]:
    return [sys.executable, "-m", module, *args]


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
    """A long-running edgefleet program with its output in a log file.

    ``env`` is laid over this process's environment; a ``None`` value removes that variable.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str | None] | None = None,
        module: str = ENTRY,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env or {})
        self.module = module
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        # A restarted program appends to the same log: its waits look only at what it wrote.
        self._log_start = self._log.tell()
        # Unbuffered: a test or the demo waits for lines in the log while the program runs.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = subprocess.Popen(
            edgefleet_command(*self.args, module=self.module),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={key: value for key, value in env.items() if value is not None},
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise StackError(f"{self.name} was not started")
        return self.process.pid

    def wait_until(self, check: Callable[[], T], what: str, timeout_s: float = 60) -> T:
        """``edgefleet.wait.wait_until`` that gives up at once if the program exits; the error
        carries the end of its log."""

        def alive_and() -> T:
            if not self.alive:
                raise StackError(f"{self.name} exited while waiting for {what}:\n{self.tail()}")
            return check()

        try:
            return wait_until(alive_and, what, timeout_s, interval_s=0.1)
        except WaitTimeoutError as exc:
            raise StackError(f"{self.name}: {exc}:\n{self.tail()}") from exc

    def wait_for_log(self, text: str, timeout_s: float = 60) -> None:
        self.wait_until(lambda: text in self.log_text(), f"{text!r} in its log", timeout_s)

    def log_text(self) -> str:
        """What the program wrote to its log since its last start."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def signal(self, sig: Signals) -> None:
        """Signal the program and every process it started (its process group)."""
        if self.process is not None and self.alive:
            os.killpg(self.process.pid, sig)

    def send_signal(self, sig: Signals) -> None:
        """Signal the program's main process only, as systemd's ``kill -HUP $MAINPID`` does."""
        if self.process is not None and self.alive:
            self.process.send_signal(sig)

    def wait(self, timeout_s: float = 15) -> int:
        """The exit status once the program has ended (it is not signalled)."""
        if self.process is None:
            raise StackError(f"{self.name} was not started")
        return self.process.wait(timeout=timeout_s)

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

    def kill(self) -> int:
        """SIGKILL, no goodbye (what a power cut or the OOM killer does), and reap it."""
        self.signal(signal.SIGKILL)
        return self.stop() or 0


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def fleet_serve_args(
    *,
    db_url: str,
    port: int,
    mqtt_host: str,
    mqtt_port: int,
    trusted_keys: Path,
    artifacts: Path,
    client_id: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``fleet serve`` command line: the one place it is written, for the demo, the tests and
    the benchmarks."""
    args = [
        "fleet", "serve",
        "--db", db_url,
        "--listen", f"127.0.0.1:{port}",
        "--mqtt-host", mqtt_host,
        "--mqtt-port", str(mqtt_port),
        "--trusted-keys", str(trusted_keys),
        "--artifacts", str(artifacts),
    ]  # fmt: skip
    if client_id is not None:
        args += ["--mqtt-client-id", client_id]
    return [*args, *extra]


class FleetProcess(ManagedProcess):
    """``fleet serve`` on a free loopback port with its database (SQLite by default) and artifacts
    in ``workdir``."""

    def __init__(  # noqa: PLR0913 - one keyword-only parameter per `fleet serve` option the tests and demo set
        self,
        workdir: Path,
        mqtt_port: int,
        trusted_key: Path,
        port: int | None = None,
        *,
        mqtt_host: str = "127.0.0.1",
        db_url: str | None = None,
        client_id: str | None = None,
        extra: Sequence[str] = (),
        module: str = ENTRY,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_path = workdir / "fleet.db"
        self.db_url = db_url or f"sqlite:///{self.db_path}"
        args = fleet_serve_args(
            db_url=self.db_url,
            port=self.port,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            trusted_keys=trusted_key,
            artifacts=workdir / "artifacts",
            client_id=client_id,
            extra=extra,
        )
        super().__init__("fleet", args, workdir / "fleet.log", module=module)

    def start_and_wait(self, timeout_s: float = 60) -> None:
        self.start()
        self.wait_until(lambda: http_ok(f"{self.url}/api/v1/health"), "the fleet API to answer", timeout_s)

    def wait_ingesting(self, timeout_s: float = 30) -> None:
        """Until the fleet's ingester is subscribed: from then on no device message is missed."""
        self.wait_for_log("ingester connected", timeout_s)


class AgentProcess(ManagedProcess):
    """``agent run`` with its own ``agent.toml`` and state folder under ``workdir/<device_id>``.

    ``settings`` are laid over the defaults below (see ``edgefleet.agent_toml``), e.g.
    ``{"update": {"probation_s": 3}}``.
    """

    def __init__(  # noqa: PLR0913 - one keyword-only parameter per agent setting the tests and demo set
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
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str | None] | None = None,
        module: str = ENTRY,
        log_name: str = "agent.log",
    ) -> None:
        self.device_id = device_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = workdir / device_id / "state"
        self.config_path = workdir / device_id / "agent.toml"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings: Settings = merged(
            agent_settings(
                device_id,
                self.state_dir,
                [trusted_key],
                fleet_url,
                mqtt_port=mqtt_port,
                api_port=self.port,
            ),
            {
                "fleet": {"poll_interval_s": poll_interval_s},
                "telemetry": {"interval_s": telemetry_interval_s},
                "update": {"probation_s": probation_s},
            },
            settings or {},
        )
        write_agent_toml(self.config_path, self.settings)
        command = ["run", "--config", str(self.config_path)]
        super().__init__(
            device_id,
            # `python -m agent` is `edgefleet agent` already: it takes the words after "agent".
            command if module == "agent" else ["agent", *command],
            workdir / device_id / log_name,
            env,
            module,
        )

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Rewrite ``agent.toml`` with ``settings`` laid over the current ones; a running agent
        reads it on SIGHUP."""
        self.settings = merged(self.settings, settings)
        write_agent_toml(self.config_path, self.settings)

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
