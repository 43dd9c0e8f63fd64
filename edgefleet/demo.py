"""``edgefleet demo``: the whole chain on one machine, with real parts.

Trains two digits models, converts them to signed int8 bundles, starts a private Mosquitto,
the fleet and N agents, deploys v1, sends predictions, prints telemetry as it arrives, then
deploys v2 and shows every device switch. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import requests

from edgefleet.mosquitto import MosquittoBroker
from edgefleet.stack import AgentProcess, FleetProcess, StackError, convert_digits, run_edgefleet
from edgefleet.wait import WaitTimeoutError, wait_until
from protocol.messages import TelemetryWindow, parse_message
from protocol.topics import DeviceChannel, Topics


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    devices: int = 2
    fleet_port: int | None = None
    telemetry_interval_s: float = 2.0
    stay: bool = True
    """Keep running (sending a trickle of predictions) until Ctrl-C after the switch."""
    fresh: bool = False


def say(message: str) -> None:
    print(f"\033[1m==>\033[0m {message}", flush=True)


def train(out: Path, seed: int, filters: int, log: Path) -> None:
    if (out / "model.keras").exists():
        return
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "converter.examples",
            "digits",
            str(out),
            "--seed",
            str(seed),
            "--filters",
            str(filters),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    with log.open("a") as handle:
        handle.write(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise StackError(f"training failed:\n{completed.stderr[-2000:]}")
    print(f"    {completed.stdout.strip()}")


def convert(model_dir: Path, version: str, key: Path, out: Path, log: Path) -> Path:
    bundle = out / f"digits-{version}.bundle"
    if not bundle.exists():
        output = convert_digits(model_dir, version, key, bundle, log)
        print("    " + "\n    ".join(line for line in output.splitlines() if line.strip())[-3000:])
    return bundle


class TelemetryPrinter:
    """Subscribes to every device's telemetry and prints one line per window."""

    def __init__(self, host: str, port: int, topics: Topics) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgefleet-demo-watch")
        self._client.on_connect = lambda client, *_: client.subscribe(
            topics.all_devices(DeviceChannel.TELEMETRY), qos=1
        )
        self._client.on_message = lambda _c, _u, message: self._print(bytes(message.payload))
        self._client.connect(host, port)
        self.enabled = threading.Event()

    def _print(self, payload: bytes) -> None:
        if not self.enabled.is_set():
            return
        try:
            window = parse_message(TelemetryWindow, payload)
        except Exception as exc:  # a demo watcher must never die on one odd message
            print(f"    [telemetry] unreadable message: {exc}")
            return
        model = f"{window.model.name} {window.model.version}" if window.model else "no model"
        latency = window.latency_ms
        lat = (
            f"p50 {latency.p50:6.2f} ms  p95 {latency.p95:6.2f} ms  p99 {latency.p99:6.2f} ms"
            if latency
            else ("no requests" + " " * 30)
        )
        res = window.resources
        print(
            f"    [telemetry] {window.device_id:<8} {model:<14} {window.requests:4d} req  {lat}  "
            f"cpu {res.cpu_percent:5.1f}%  rss {res.process_rss_bytes / 2**20:5.1f} MiB  "
            f"mem {res.memory_used_percent:4.1f}%",
            flush=True,
        )

    def __enter__(self) -> TelemetryPrinter:
        self._client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def send_predictions(
    agents: list[AgentProcess], x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], batch: int = 16
) -> dict[str, float]:
    """Send the evaluation set to every agent in small batches; return accuracy per device."""
    accuracy = {}
    for agent in agents:
        correct = 0
        with requests.Session() as session:
            for start in range(0, len(x), batch):
                response = session.post(
                    f"{agent.url}/v1/predict", json={"inputs": x[start : start + batch].tolist()}, timeout=10
                )
                response.raise_for_status()
                predicted = [p["class"] for p in response.json()["predictions"]]
                correct += int(np.sum(np.asarray(predicted) == y[start : start + batch]))
        accuracy[agent.device_id] = correct / len(x)
    return accuracy


def deploy(fleet_url: str, bundle: Path, version: str) -> None:
    with bundle.open("rb") as handle:
        response = requests.post(
            f"{fleet_url}/api/v1/models",
            data=handle,
            timeout=60,
            headers={"Content-Type": "application/octet-stream"},
        )
    if response.status_code not in (200, 201):
        raise StackError(f"the fleet refused {bundle.name}: {response.status_code} {response.text}")
    response = requests.post(
        f"{fleet_url}/api/v1/deployments",
        json={"name": "digits", "version": version, "device_id": None},
        timeout=10,
    )
    if response.status_code != 200:
        raise StackError(f"deploying digits {version} failed: {response.status_code} {response.text}")
    print(
        f"    deployed digits {version} to all devices; notified: {response.json().get('devices_notified')}"
    )


def wait_for_fleet_view(
    fleet_url: str, version: str, count: int, timeout_s: float = 90
) -> list[dict[str, Any]]:
    """The fleet's device list once ``count`` devices report ``version`` as committed (or at the
    deadline: the demo shows what the fleet knows rather than failing)."""
    seen: list[list[dict[str, Any]]] = [[]]

    def enough_committed() -> bool:
        devices: list[dict[str, Any]] = requests.get(f"{fleet_url}/api/v1/devices", timeout=5).json()
        seen[0] = devices
        committed = [d for d in devices if (d.get("model") or {}).get("version") == version]
        return len(committed) >= count

    with contextlib.suppress(WaitTimeoutError):
        wait_until(enough_committed, f"{count} devices to commit {version}", timeout_s, interval_s=0.5)
    return seen[0]


@dataclass(frozen=True)
class Artifacts:
    """What the demo makes before it starts anything: the operator's public key and two bundles."""

    public_key: Path
    v1: Path
    v2: Path


def prepare(work: Path, log: Path) -> Artifacts:
    """Train both models, make a signing key and convert both to signed int8 bundles (each step
    reuses what an earlier run left in ``work``)."""
    say(f"training two small CNNs on scikit-learn's digits (work folder: {work})")
    train(work / "models" / "v1", seed=0, filters=8, log=log)
    train(work / "models" / "v2", seed=1, filters=12, log=log)

    say("generating an operator signing key")
    keys = work / "keys"
    if not (keys / "operator.key").exists():
        print("    " + run_edgefleet(["keys", "generate", "--out", str(keys)], log=log).strip())
    key, public = keys / "operator.key", keys / "operator.pub"

    say("converting both to full-integer int8 bundles, validated in tflite-runtime")
    bundles = work / "bundles"
    bundles.mkdir(exist_ok=True)
    v1 = convert(work / "models" / "v1", "1.0.0", key, bundles, log)
    v2 = convert(work / "models" / "v2", "2.0.0", key, bundles, log)
    return Artifacts(public, v1, v2)


def start_stack(
    stack: ExitStack, work: Path, public: Path, options: DemoOptions
) -> tuple[MosquittoBroker, FleetProcess, list[AgentProcess]]:
    """Mosquitto, the fleet and the agents, each stopped by ``stack`` in reverse order."""
    say("starting a private Mosquitto")
    broker = stack.enter_context(MosquittoBroker(work / "mosquitto"))
    print(f"    mqtt://{broker.host}:{broker.port}")

    say("starting the fleet service")
    fleet = FleetProcess(work / "fleet", broker.port, public, port=options.fleet_port)
    stack.callback(fleet.stop)
    fleet.start_and_wait()
    print(f"    {fleet.url}  (log: {fleet.log_path})")

    say(f"starting {options.devices} agents")
    agents = [
        AgentProcess(
            f"dev-{i + 1}",
            work / "devices",
            fleet.url,
            broker.port,
            public,
            telemetry_interval_s=options.telemetry_interval_s,
            # A new model is watched this long before it is committed (30 s by default); the
            # demo shortens it so the second deployment does not wait on the first's probation.
            probation_s=10,
        )
        for i in range(options.devices)
    ]
    for agent in agents:
        stack.callback(agent.stop)
        agent.start_and_wait()
        print(f"    {agent.device_id}: {agent.url}  (log: {agent.log_path})")
    return broker, fleet, agents


def show_fleet_view(fleet_url: str, version: str, count: int) -> None:
    say(f"waiting for both devices to commit {version} after their probation")
    devices = wait_for_fleet_view(fleet_url, version, count)
    say("the fleet's view:")
    print(
        json.dumps(
            [{k: d.get(k) for k in ("device_id", "presence", "model", "desired")} for d in devices],
            indent=2,
        )
    )


def run_demo(options: DemoOptions, stop: Callable[[], bool] = lambda: False) -> None:
    work = options.workdir.resolve()
    if options.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    made = prepare(work, work / "commands.log")
    with ExitStack() as stack:
        broker, fleet, agents = start_stack(stack, work, made.public_key, options)
        printer = stack.enter_context(TelemetryPrinter(broker.host, broker.port, Topics()))

        say("pushing digits 1.0.0 to the fleet and deploying it to every device")
        deploy(fleet.url, made.v1, "1.0.0")
        for agent in agents:
            agent.wait_for_version("1.0.0")
            print(f"    {agent.device_id} serves digits 1.0.0")

        evaluation = np.load(work / "models" / "v1" / "evaluation.npz")
        x, y = evaluation["x"], evaluation["y"]
        say(f"sending {len(x)} predictions to each device")
        for device, acc in send_predictions(agents, x, y).items():
            print(f"    {device}: accuracy {acc:.3f} on the held-out digits")

        say(f"telemetry as it arrives (every {options.telemetry_interval_s:g} s); dashboard: {fleet.url}/")
        printer.enabled.set()
        time.sleep(options.telemetry_interval_s * 2 + 0.5)

        say("pushing digits 2.0.0 and deploying it: watch both devices switch")
        deploy(fleet.url, made.v2, "2.0.0")
        for agent in agents:
            agent.wait_for_version("2.0.0")
            print(f"    {agent.device_id} switched to digits 2.0.0 (previous model kept on disk)")
        for device, acc in send_predictions(agents, x, y).items():
            print(f"    {device}: accuracy {acc:.3f} with 2.0.0")
        time.sleep(options.telemetry_interval_s * 2 + 0.5)

        show_fleet_view(fleet.url, "2.0.0", len(agents))
        if not options.stay:
            say("demo complete; stopping everything")
            return
        say(f"running: dashboard at {fleet.url}/ — press Ctrl-C to stop everything")
        try:
            while not stop():
                send_predictions(agents, x[:32], y[:32])
                time.sleep(1)
        except KeyboardInterrupt:
            say("stopping the agents, the fleet and Mosquitto")
            raise
