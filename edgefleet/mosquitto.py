"""A private Mosquitto broker on a free loopback port, for the demo and the tests.

Each instance owns its configuration directory and process, so a test can stop, restart or
break its own broker without touching any other.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgefleet.wait import WaitTimeoutError, wait_until
from protocol.errors import EdgefleetError


class BrokerError(EdgefleetError):
    """Mosquitto is missing or did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """Whether ``host:port`` accepts a connection within ``timeout_s``."""
    try:
        return wait_until(lambda: port_open(host, port), f"{host}:{port} to listen", timeout_s)
    except WaitTimeoutError:
        return False


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the server's certificate and key, and the CA its clients' certificates
    must chain to (needed by Mosquitto even when clients present none)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False
    """Refuse clients without a certificate from ``ca_file``."""
    use_identity_as_username: bool = False
    """The client certificate's CN becomes the MQTT user name (for ACLs)."""

    def listener_lines(self) -> str:
        return (
            f"cafile {self.ca_file}\n"
            f"certfile {self.cert_file}\n"
            f"keyfile {self.key_file}\n"
            "tls_version tlsv1.2\n"
            f"require_certificate {str(self.require_certificate).lower()}\n"
            f"use_identity_as_username {str(self.use_identity_as_username).lower()}\n"
        )


class MosquittoBroker:
    """Start, stop and restart one Mosquitto process listening on ``host:port``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        executable: str | None = None,
        extra_config: str = "",
        *,
        tls: BrokerTls | None = None,
    ) -> None:
        found = executable or shutil.which("mosquitto") or _sbin("mosquitto")
        if found is None:
            raise BrokerError(
                "mosquitto is not installed; install it (Debian: apt-get install mosquitto) and try again"
            )
        self.executable = found
        self.host = host
        self.port = port or free_port(host)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_config(self) -> None:
        # Started as root, Mosquitto drops to the `mosquitto` user and then cannot write its log
        # or persistence file in our private folder; stay the user we are.
        run_as = "user root\n" if os.geteuid() == 0 else ""
        tls = self.tls.listener_lines() if self.tls is not None else ""
        self.config_path.write_text(
            run_as + f"listener {self.port} {self.host}\n" + tls + "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_config}\n"
        )

    def start(self, timeout_s: float = 10.0) -> MosquittoBroker:
        if self.running:
            return self
        self._write_config()
        self._process = subprocess.Popen(
            [self.executable, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for_port(self.host, self.port, timeout_s):
            self.stop()
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise BrokerError(
                f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s}s\n{log}"
            )
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sbin(name: str) -> str | None:
    for folder in ("/usr/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None
