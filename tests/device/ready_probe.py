"""Start an installed agent as systemd would hand it a notify socket, and time it to READY=1.

    python3 ready_probe.py START_EPOCH AGENT_COMMAND...

Stdlib only: it runs on the device's own Python (scripts/arm-test, under emulation). It binds a
datagram socket, starts the command with ``NOTIFY_SOCKET`` set, waits for ``READY=1`` (up to 5
minutes), reads ``/v1/health`` from the port in the config, stops the agent with SIGTERM and prints
one line: seconds from START_EPOCH (when the archive was unpacked) and from the agent's start
to READY. Exit 1 when READY never came or the agent did not stop cleanly.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import BinaryIO


def main(started: float, command: list[str]) -> int:
    # An abstract socket: proot does not translate the paths of datagrams sent to a socket file.
    name = f"edgefleet-ready-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(1.0)
        launched = time.time()
        log = tempfile.TemporaryFile()  # noqa: SIM115 (a pipe left unread would block the agent)
        agent = subprocess.Popen(command, env={**os.environ, "NOTIFY_SOCKET": "@" + name}, stderr=log)
        deadline = time.monotonic() + 300
        lines: list[str] = []
        while "READY=1" not in lines and time.monotonic() < deadline and agent.poll() is None:
            try:
                lines += sock.recv(4096).decode().splitlines()
            except TimeoutError:
                continue
        ready = time.time()
    if "READY=1" not in lines:
        agent.kill()
        agent.wait()
        print(f"no READY=1 (agent exit {agent.returncode}):\n{_tail(log)}", file=sys.stderr)
        return 1
    with open(command[command.index("--config") + 1]) as handle:
        config = handle.read()
    port = re.search(r"^port = (\d+)", config.split("[api]")[1], re.M)
    health = "?"
    if port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/v1/health", timeout=30) as answer:
            health = json.loads(answer.read())["status"]
    agent.terminate()
    agent.wait(timeout=120)
    status = next((ln.removeprefix("STATUS=") for ln in lines if ln.startswith("STATUS=")), "")
    print(
        f"READY {ready - started:.1f} s after unpacking ({ready - launched:.1f} s after the agent started); "
        f"STATUS={status}; /v1/health: {health}; exit {agent.returncode}"
    )
    if agent.returncode != 0:
        print(_tail(log), file=sys.stderr)
    return 0 if agent.returncode == 0 else 1


def _tail(log: BinaryIO) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), sys.argv[2:]))
