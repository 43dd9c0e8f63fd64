"""Agent figures, measured side by side in one run.

Runs the real chain (Mosquitto, the fleet, one agent as processes; the digits CNN converted to
int8 by the real converter), then measures on the same model and the same input:

* raw ``invoke`` p50 in each runtime (tflite-runtime, LiteRT) in a bare process, and that bare
  process's RSS (Python + numpy + the runtime + the model, nothing else);
* p50 of one ``POST /v1/predict`` over a keep-alive connection, JSON body and binary body;
* throughput at 8 concurrent keep-alive connections against the agent and against the recipe
  users write by hand (FastAPI + a pydantic body + uvicorn, one process, same model and input);
  the clients run in two separate processes (4 connections each) so the load generator does not
  share this process's GIL;
* failed requests under that load while a new model is activated (v2) and while one is rolled
  back by probation (v3; the rollback is forced by reloading the config with SIGHUP so that any
  latency counts as worse than the previous model's);
* the agent's RSS against the bare process; its CPU while idle with telemetry every 10 s;
* telemetry bytes per device per day at 60 s windows, MQTT framing included;
* a 256x256x3 float image model on a second agent: its bundle (``edgefleet bundle``) against
  its model, and the p50 of an ``.npz``, a raw float32 and a JSON body against the raw invoke.

Prints a table and, last, one line of JSON: ``{"benchmark": "agent", "figures": {...}}``.
Timings on shared cores are noisy: compare the figures of one run with each other.

    .venv/bin/python -m benchmarks.agent [--seconds 5] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
import psutil
import requests
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.mosquitto import MosquittoBroker, free_port, wait_for_port
from edgefleet.stack import AgentProcess, FleetProcess, convert_digits, run_edgefleet
from edgefleet.wait import wait_until
from protocol.bundle import read_bundle, read_samples
from protocol.manifest import TensorSpec
from protocol.messages import TelemetryWindow, parse_message
from protocol.signing import TrustedKeys
from protocol.tensors import dequantize, quantize
from protocol.topics import Topics
from runtime import LoadedModel, load_model

DEVICE = "bench-1"

BARE = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    path, runtime, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = np.zeros(detail["shape"], dtype=detail["dtype"])
    times = []
    for _ in range(n):
        start = time.perf_counter()
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    print(json.dumps({"p50_ms": float(np.percentile(np.array(times) * 1000, 50)), "rss": rss}))
    """
)

FASTAPI_RECIPE = textwrap.dedent(
    """
    # The recipe users write by hand: FastAPI, a pydantic body, uvicorn, one process.
    import sys, threading
    import numpy as np
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from tflite_runtime.interpreter import Interpreter

    path, port = sys.argv[1], int(sys.argv[2])
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    lock = threading.Lock()

    class Body(BaseModel):
        inputs: list[list[list[float]]]

    app = FastAPI()

    @app.post("/v1/predict")
    def predict(body: Body) -> dict:
        x = np.asarray(body.inputs, dtype=np.float32)[np.newaxis]
        q = np.clip(np.round(x / in_scale) + in_zero, -128, 127).astype(np.int8)
        with lock:
            interpreter.set_tensor(inp["index"], q)
            interpreter.invoke()
            y = interpreter.get_tensor(out["index"])
        return {"outputs": ((y.astype(np.float32) - out_zero) * out_scale).tolist()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    """
)

LOADGEN = textwrap.dedent(
    """
    # Keep-alive HTTP clients in threads; prints counts, failures and model versions seen.
    import collections, http.client, json, sys, threading, time
    host, port, seconds, threads, ctype, body_path, track = (
        sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6],
        sys.argv[7] == "1",
    )
    body = open(body_path, "rb").read()
    lock = threading.Lock()
    ok, failed, versions, errors = [0], [0], collections.Counter(), []
    start_at = time.monotonic() + 0.2
    stop_at = start_at + seconds

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=10)
        headers = {"Content-Type": ctype}
        while time.monotonic() < start_at:
            time.sleep(0.005)
        while time.monotonic() < stop_at:
            try:
                conn.request("POST", "/v1/predict", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                good = response.status == 200
                version = None
                if good and track:
                    model = response.getheader("X-Model")
                    version = model.split("/")[1] if model else json.loads(data)["model"]["version"]
            except Exception as exc:
                good, data = False, repr(exc).encode()
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
            with lock:
                if good:
                    ok[0] += 1
                    if version:
                        versions[version] += 1
                else:
                    failed[0] += 1
                    if len(errors) < 5:
                        errors.append(data[:200].decode(errors="replace"))
        conn.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(json.dumps({"ok": ok[0], "failed": failed[0], "versions": dict(versions), "errors": errors}))
    """
)


IMAGE_MODEL = textwrap.dedent(
    """
    # A 256x256x3 float image classifier with ~3.7 MB of float32 weights, like a small published one.
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(0)
    image = keras.Input((256, 256, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(image)
    x = keras.layers.Conv2D(16, 3, strides=4, activation="relu")(x)
    x = keras.layers.Dense(256, activation="relu")(keras.layers.Flatten()(x))
    model = keras.Model(image, keras.layers.Dense(10, activation="softmax")(x))
    with open(sys.argv[1], "wb") as handle:
        handle.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    """
)
IMAGE_DEVICE = "bench-img"


# -- measurements --------------------------------------------------------------------------------
def bare_runtime(model_path: Path, runtime: str, n: int, threads: int = 1) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", BARE, str(model_path), runtime, str(n), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def raw_invoke_p50(model: bytes, x: npt.NDArray[np.float32], spec: TensorSpec, n: int) -> float:
    """The agent's own runtime wrapper, in this process: the floor the HTTP figures add to."""
    return raw_invoke_p50_of(load_model(model, "tflite-runtime"), quantize(x[np.newaxis], spec), n)


def raw_invoke_p50_of(loaded: LoadedModel, batch: npt.NDArray[Any], n: int) -> float:
    """p50 of one invoke of ``batch`` (already in the input's dtype, the loaded batch size)."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        loaded.run([batch])
        times.append(time.perf_counter() - start)
    return float(np.percentile(np.asarray(times) * 1000, 50))


def http_p50(port: int, body: bytes, content_type: str, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - start)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
    finally:
        conn.close()
    return float(np.percentile(np.asarray(times) * 1000, 50))


class Load:
    """8 keep-alive connections from 2 client processes (4 each), in the background."""

    def __init__(
        self, port: int, body_path: Path, content_type: str, seconds: float, track: bool = False
    ) -> None:
        self.seconds = seconds
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LOADGEN,
                    "127.0.0.1",
                    str(port),
                    str(seconds),
                    "4",
                    content_type,
                    str(body_path),
                    "1" if track else "0",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]

    def result(self) -> dict[str, Any]:
        total: dict[str, Any] = {"ok": 0, "failed": 0, "versions": {}, "errors": []}
        for proc in self.procs:
            out, _ = proc.communicate(timeout=self.seconds + 60)
            part = json.loads(out.strip().splitlines()[-1])
            total["ok"] += part["ok"]
            total["failed"] += part["failed"]
            total["errors"] += part["errors"]
            for version, count in part["versions"].items():
                total["versions"][version] = total["versions"].get(version, 0) + count
        total["rps"] = total["ok"] / self.seconds
        return total


class PeakRss:
    """The largest RSS of a process plus all its children (the update worker), sampled every
    20 ms in a thread until ``stop``: the memory an update really needs on the device."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.02):
            total = 0
            with_children = [self._process, *self._process.children(recursive=True)]
            for process in with_children:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # a worker that ended between listing and reading
                    continue
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


class TelemetryTap:
    """Collects the agent's telemetry payloads as they leave the broker."""

    def __init__(self, port: int, topic: str) -> None:
        self.topic = topic
        self.payloads: list[bytes] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-tap")
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.on_message = lambda c, u, m: self.payloads.append(bytes(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def mqtt_bytes_per_day(topic: str, payload_bytes: int, interval_s: float, keepalive_s: float) -> int:
    """QoS 1 PUBLISH (fixed header, topic, packet id, payload) + PUBACK per window, plus the
    keepalive PINGREQ/PINGRESP pair (2 + 2 bytes); TCP/IP headers not included."""
    remaining = 2 + len(topic.encode()) + 2 + payload_bytes
    publish = 1 + _varint_len(remaining) + remaining
    windows = 86400 / interval_s
    pings = 86400 / keepalive_s
    return int(windows * (publish + 4) + pings * 4)


def _wait(predicate: Any, what: str, timeout_s: float = 120) -> None:
    wait_until(predicate, what, timeout_s, interval_s=0.1)


def _events(fleet_url: str) -> list[dict[str, Any]]:
    response = requests.get(f"{fleet_url}/api/v1/devices/{DEVICE}/events?limit=100", timeout=5)
    events: list[dict[str, Any]] = response.json() if response.ok else []
    return events


def _push_and_deploy(fleet_url: str, bundle: Path, version: str) -> None:
    requests.post(
        f"{fleet_url}/api/v1/models",
        data=bundle.read_bytes(),
        timeout=30,
        headers={"Content-Type": "application/octet-stream"},
    ).raise_for_status()
    requests.post(
        f"{fleet_url}/api/v1/deployments",
        timeout=10,
        json={"name": "digits", "version": version, "device_id": None},
    ).raise_for_status()


def fastapi_throughput(model_path: Path, body_path: Path, seconds: float) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", FASTAPI_RECIPE, str(model_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        if not wait_for_port("127.0.0.1", port, 60):
            raise RuntimeError("the FastAPI recipe did not start")
        http_p50(port, body_path.read_bytes(), "application/json", 50)  # warm up
        result = Load(port, body_path, "application/json", seconds).result()
        result["rss"] = psutil.Process(server.pid).memory_info().rss
        return result
    finally:
        server.terminate()
        server.wait(10)


def _npz_body(x: npt.NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, image=x)
    return buffer.getvalue()


def image_figures(
    work: Path, *, key: Path, public: Path, fleet: FleetProcess, broker_port: int, n: int
) -> dict[str, Any]:
    """The 256x256x3 float model: its bundle against its model, and each body form's p50 on a
    second agent against the raw invoke of one image in the agent's own runtime wrapper."""
    model_path, bundle_path = work / "image256.tflite", work / "image256.bundle"
    subprocess.run([sys.executable, "-c", IMAGE_MODEL, str(model_path)], check=True, capture_output=True)
    run_edgefleet(
        [
            "bundle",
            str(model_path),
            "--name",
            "image256",
            "--version",
            "1.0.0",
            "--task",
            "classification",
            "--key",
            str(key),
            "--out",
            str(bundle_path),
        ]
    )
    x = np.random.default_rng(0).uniform(0, 1, (1, 256, 256, 3)).astype(np.float32)
    loaded = load_model(model_path.read_bytes(), "tflite-runtime")
    raw = raw_invoke_p50_of(loaded, x, n)
    agent = AgentProcess(
        IMAGE_DEVICE,
        work / "devices",
        fleet.url,
        broker_port,
        public,
        poll_interval_s=300,
        env={"EDGEFLEET_AGENT_RUNTIME__KIND": "tflite-runtime", "EDGEFLEET_AGENT_UPDATE__PROBATION_S": "0"},
    )
    try:
        agent.start_and_wait()
        requests.post(
            f"{fleet.url}/api/v1/models",
            data=bundle_path.read_bytes(),
            timeout=60,
            headers={"Content-Type": "application/octet-stream"},
        ).raise_for_status()
        requests.post(
            f"{fleet.url}/api/v1/deployments",
            timeout=10,
            json={"name": "image256", "version": "1.0.0", "device_id": IMAGE_DEVICE},
        ).raise_for_status()
        agent.wait_for_version("1.0.0", timeout_s=120)
        npz = http_p50(agent.port, _npz_body(x), "application/x-npz", n)
        octets = http_p50(
            agent.port, np.ascontiguousarray(x, dtype="<f4").tobytes(), "application/octet-stream", n
        )
        json_p50 = http_p50(
            agent.port, json.dumps({"inputs": x[0].tolist()}).encode(), "application/json", max(5, n // 20)
        )
    finally:
        agent.stop()
    return {
        "image256_model_bytes": model_path.stat().st_size,
        "image256_bundle_bytes": bundle_path.stat().st_size,
        "image256_bundle_over_model": round(bundle_path.stat().st_size / model_path.stat().st_size, 3),
        "image256_raw_invoke_p50_ms": round(raw, 3),
        "image256_http_npz_p50_ms": round(npz, 3),
        "image256_http_npz_over_raw_ms": round(npz - raw, 3),
        "image256_http_float32_p50_ms": round(octets, 3),
        "image256_http_float32_over_raw_ms": round(octets - raw, 3),
        "image256_http_json_p50_ms": round(json_p50, 3),
        "image256_http_json_over_raw_ms": round(json_p50 - raw, 3),
    }


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one linear run of measurements
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--requests", type=int, default=1000, help="requests per latency figure")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="seconds of idle CPU measurement")
    args = parser.parse_args(argv)
    topics = Topics()

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        for name, extra in (("model", []), ("model2", ["--seed", "1", "--filters", "12"])):
            subprocess.run(
                [sys.executable, "-m", "converter.examples", "digits", str(work / name), *extra],
                check=True,
                capture_output=True,
            )
        run_edgefleet(["keys", "generate", "--out", str(work / "keys")])
        key, public = work / "keys" / "operator.key", work / "keys" / "operator.pub"
        v1, v2, v3 = work / "v1.bundle", work / "v2.bundle", work / "v3.bundle"
        convert_digits(work / "model", "1.0.0", key, v1)
        convert_digits(work / "model2", "2.0.0", key, v2)
        convert_digits(work / "model", "3.0.0", key, v3)
        bundle = read_bundle(v1)
        manifest = bundle.verify(TrustedKeys.from_paths([public]))
        model_path = work / "v1.tflite"
        model_path.write_bytes(bundle.members["model.tflite"])
        samples = read_samples(bundle.members["samples.npz"])
        # The recorded input is what the tensor takes (int8 for this model): back to real values.
        first = samples.inputs[0][0]
        x = first.astype(np.float32) if samples.legacy else dequantize(first, manifest.inputs[0])
        json_body = work / "body.json"
        json_body.write_text(json.dumps({"inputs": x.tolist()}))
        binary_body = work / "body.bin"
        binary_body.write_bytes(np.ascontiguousarray(x[np.newaxis], dtype="<f4").tobytes())

        runtimes = {
            rt: bare_runtime(model_path, rt, args.requests * 5) for rt in ("tflite-runtime", "litert")
        }
        recipe = fastapi_throughput(model_path, json_body, args.seconds)

        with MosquittoBroker(work / "mosquitto") as broker:
            tap = TelemetryTap(broker.port, topics.telemetry(DEVICE))
            fleet = FleetProcess(work / "fleet", broker.port, public)
            agent = AgentProcess(
                DEVICE,
                work / "devices",
                fleet.url,
                broker.port,
                public,
                telemetry_interval_s=10,
                poll_interval_s=300,
                env={
                    "EDGEFLEET_AGENT_RUNTIME__KIND": "tflite-runtime",
                    "EDGEFLEET_AGENT_UPDATE__PROBATION_S": "3",
                    "EDGEFLEET_AGENT_UPDATE__HEALTH_CHECK_INTERVAL_S": "0.5",
                },
            )
            try:
                fleet.start_and_wait()
                agent.start_and_wait()
                _push_and_deploy(fleet.url, v1, "1.0.0")
                agent.wait_for_version("1.0.0")
                _wait(lambda: agent.health().get("update_state") == "idle", "v1 to commit", 60)
                raw = raw_invoke_p50(bundle.members["model.tflite"], x, manifest.inputs[0], args.requests)
                json_p50 = http_p50(agent.port, json_body.read_bytes(), "application/json", args.requests)
                bin_p50 = http_p50(
                    agent.port, binary_body.read_bytes(), "application/octet-stream", args.requests
                )
                ours = Load(agent.port, json_body, "application/json", args.seconds).result()
                ours_bin = Load(agent.port, binary_body, "application/octet-stream", args.seconds).result()

                # Activation of v2 under load.
                # Long enough for the worker-process steps under this load, and for requests on the
                # new model after the switch.
                seconds_switch = max(args.seconds * 4, 20.0)
                assert agent.process is not None
                serving_rss = psutil.Process(agent.process.pid).memory_info().rss
                load = Load(agent.port, json_body, "application/json", seconds_switch, track=True)
                time.sleep(1.0)
                peak = PeakRss(agent.process.pid)
                _push_and_deploy(fleet.url, v2, "2.0.0")
                agent.wait_for_version("2.0.0", timeout_s=seconds_switch)
                activation = load.result()
                update_peak_rss = peak.stop()
                _wait(lambda: agent.health().get("update_state") == "idle", "v2 to settle", 60)
                v2_end = [
                    e
                    for e in _events(fleet.url)
                    if e.get("target", {}).get("version") == "2.0.0"
                    and e.get("state") in ("commit", "failed")
                ]
                activation_outcome = (
                    f"{v2_end[0]['state']}: {v2_end[0].get('reason')}" if v2_end else "unknown"
                )

                # Rollback of v3 under load: any latency is now worse than the previous model's.
                agent.configure({"update": {"max_latency_factor": 1e-9}})
                assert agent.process is not None
                agent.process.send_signal(signal.SIGHUP)
                # An update runs under the policy it started with: v3 must start after the reload.
                agent.wait_for_log("SIGHUP: config reloaded", timeout_s=60)
                load = Load(agent.port, json_body, "application/json", seconds_switch, track=True)
                time.sleep(1.0)
                _push_and_deploy(fleet.url, v3, "3.0.0")
                agent.wait_until(  # on a timeout, the error carries the agent's log
                    lambda: any(
                        e.get("state") == "failed" and e.get("target", {}).get("version") == "3.0.0"
                        for e in _events(fleet.url)
                    ),
                    "v3 to be rolled back",
                    seconds_switch + 30,
                )
                rollback = load.result()
                rollback_reason = next(
                    e.get("reason")
                    for e in _events(fleet.url)
                    if e.get("state") == "failed" and e.get("target", {}).get("version") == "3.0.0"
                )
                served_after = agent.serving_version()
                image = image_figures(
                    work,
                    key=key,
                    public=public,
                    fleet=fleet,
                    broker_port=broker.port,
                    n=max(50, args.requests // 5),
                )

                process = psutil.Process(agent.process.pid)
                rss = process.memory_info().rss
                # Idle: no requests; telemetry every 10 s.
                time.sleep(2.0)
                before, started = process.cpu_times(), time.monotonic()
                time.sleep(args.idle_seconds)
                after, elapsed = process.cpu_times(), time.monotonic() - started
                idle_cpu = 100 * ((after.user - before.user) + (after.system - before.system)) / elapsed
                rss_idle = process.memory_info().rss
            finally:
                agent.stop()
                fleet.stop()
                tap.close()

    windows = [parse_message(TelemetryWindow, p) for p in tap.payloads]  # either wire form
    busiest = max(
        (p for p, w in zip(tap.payloads, windows, strict=True) if w.prediction), key=len, default=b""
    )
    idle_window = min(tap.payloads, key=len, default=b"")
    topic = topics.telemetry(DEVICE)
    bare_rss = runtimes["tflite-runtime"]["rss"]
    figures: dict[str, Any] = {
        "raw_invoke_p50_ms_tflite_runtime_bare": round(runtimes["tflite-runtime"]["p50_ms"], 4),
        "raw_invoke_p50_ms_litert_bare": round(runtimes["litert"]["p50_ms"], 4),
        "bare_rss_mib_tflite_runtime": round(bare_rss / 2**20, 1),
        "bare_rss_mib_litert": round(runtimes["litert"]["rss"] / 2**20, 1),
        "raw_invoke_p50_ms": round(raw, 4),
        "http_json_p50_ms": round(json_p50, 4),
        "http_json_over_raw_ms": round(json_p50 - raw, 4),
        "http_binary_p50_ms": round(bin_p50, 4),
        "http_binary_over_raw_ms": round(bin_p50 - raw, 4),
        "agent_json_8conn_rps": round(ours["rps"], 1),
        "agent_binary_8conn_rps": round(ours_bin["rps"], 1),
        "fastapi_recipe_json_8conn_rps": round(recipe["rps"], 1),
        "agent_over_fastapi_ratio_json": round(ours["rps"] / recipe["rps"], 2) if recipe["rps"] else None,
        "failed_requests_throughput_runs": ours["failed"] + ours_bin["failed"] + recipe["failed"],
        "activation_requests": activation["ok"] + activation["failed"],
        "activation_failed_requests": activation["failed"],
        "activation_versions_seen": activation["versions"],
        "activation_outcome": activation_outcome,
        "rollback_requests": rollback["ok"] + rollback["failed"],
        "rollback_failed_requests": rollback["failed"],
        "rollback_versions_seen": rollback["versions"],
        "serving_after_rollback": served_after,
        "agent_rss_mib_after_load": round(rss / 2**20, 1),
        "agent_rss_mib_idle": round(rss_idle / 2**20, 1),
        "agent_rss_over_bare_mib": round((rss_idle - bare_rss) / 2**20, 1),
        "serving_rss_mib_before_update": round(serving_rss / 2**20, 1),
        "update_peak_rss_mib_agent_and_worker": round(update_peak_rss / 2**20, 1),
        "update_peak_over_serving": round(update_peak_rss / serving_rss, 3),
        "fastapi_recipe_rss_mib": round(recipe["rss"] / 2**20, 1),
        "idle_seconds_measured": args.idle_seconds,
        "idle_cpu_percent_of_one_core": round(idle_cpu, 3),
        "telemetry_windows_seen": len(windows),
        "telemetry_payload_bytes_busy": len(busiest),
        "telemetry_payload_bytes_idle": len(idle_window),
        "telemetry_mqtt_bytes_per_day_60s_busy": mqtt_bytes_per_day(topic, len(busiest), 60, 30),
        "telemetry_mqtt_bytes_per_day_60s_idle": mqtt_bytes_per_day(topic, len(idle_window), 60, 30),
    }
    figures.update(image)
    if activation["failed"] or rollback["failed"]:
        figures["switch_errors"] = activation["errors"] + rollback["errors"]
    figures["rollback_reason"] = rollback_reason
    print(f"{'figure':<44}{'value':>30}")
    for name, value in figures.items():
        print(f"{name:<44}{json.dumps(value) if isinstance(value, dict) else str(value):>30}")
    print(json.dumps({"benchmark": "agent", "figures": figures}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
