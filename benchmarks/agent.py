"""Agent serving figures, measured side by side in one run.

Runs the real chain (Mosquitto, fleet, one agent as processes; the digits CNN converted to int8),
then measures on the same model and input:
  * p50 of the raw tflite-runtime ``invoke`` in this process (the floor),
  * p50 of one ``POST /v1/predict`` with a JSON body over a keep-alive connection,
  * throughput with 8 concurrent keep-alive clients,
  * the agent process's RSS.
Prints a table and, last, one line of JSON: {"benchmark": "agent", "figures": {...}}.

    .venv/bin/python -m benchmarks.agent [--seconds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests

from agent.runtime import load_model
from edgefleet.mosquitto import MosquittoBroker
from edgefleet.stack import AgentProcess, FleetProcess, convert_digits, run_edgefleet
from protocol.bundle import read_bundle
from protocol.signing import TrustedKeys
from protocol.tensors import quantize


def _percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


def raw_invoke_p50(model: bytes, x: np.ndarray, spec_dtype: np.dtype, n: int) -> float:
    loaded = load_model(model, "tflite-runtime")
    batch = x[np.newaxis].astype(spec_dtype)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        loaded.run([batch])
        times.append(time.perf_counter() - start)
    return _percentile_ms(times, 50)


def http_p50(url: str, body: dict[str, object], n: int) -> float:
    times = []
    with requests.Session() as session:
        for _ in range(n):
            start = time.perf_counter()
            response = session.post(url, json=body, timeout=5)
            times.append(time.perf_counter() - start)
            response.raise_for_status()
    return _percentile_ms(times, 50)


def throughput(url: str, body: dict[str, object], clients: int, seconds: float) -> tuple[float, int]:
    counts = [0] * clients
    failures = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                if session.post(url, json=body, timeout=5).status_code == 200:
                    counts[i] += 1
                else:
                    failures[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds, sum(failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the throughput run")
    parser.add_argument("--requests", type=int, default=500, help="requests for each latency figure")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "converter.examples", "digits", str(work / "model")],
            check=True,
            capture_output=True,
        )
        run_edgefleet(["keys", "generate", "--out", str(work / "keys")])
        bundle_path = work / "digits.bundle"
        model_dir = work / "model"
        convert_digits(model_dir, "1.0.0", work / "keys" / "operator.key", bundle_path)
        public = work / "keys" / "operator.pub"
        bundle = read_bundle(bundle_path)
        manifest = bundle.verify(TrustedKeys.from_paths([public]))
        x = np.load(io.BytesIO(bundle.members["samples.npz"]))["x"][0]

        with MosquittoBroker(work / "mosquitto") as broker:
            fleet = FleetProcess(work / "fleet", broker.port, public)
            agent = AgentProcess(
                "bench-1", work / "devices", fleet.url, broker.port, public, telemetry_interval_s=10
            )
            try:
                fleet.start_and_wait()
                agent.start_and_wait()
                requests.post(
                    f"{fleet.url}/api/v1/models",
                    data=bundle_path.read_bytes(),
                    timeout=30,
                    headers={"Content-Type": "application/octet-stream"},
                ).raise_for_status()
                requests.post(
                    f"{fleet.url}/api/v1/deployments",
                    timeout=10,
                    json={"name": "digits", "version": "1.0.0", "device_id": None},
                ).raise_for_status()
                agent.wait_for_version("1.0.0")
                url = f"{agent.url}/v1/predict"
                body: dict[str, object] = {"inputs": x.tolist()}
                in_dtype = np.dtype(manifest.inputs[0].dtype)
                raw = raw_invoke_p50(
                    bundle.members["model.tflite"], quantize(x, manifest.inputs[0]), in_dtype, args.requests
                )
                http_json = http_p50(url, body, args.requests)
                rps, failed = throughput(url, body, clients=8, seconds=args.seconds)
                assert agent.process is not None
                rss = psutil.Process(agent.process.pid).memory_info().rss
            finally:
                agent.stop()
                fleet.stop()

    figures = {
        "raw_invoke_p50_ms": round(raw, 4),
        "http_json_p50_ms": round(http_json, 4),
        "http_json_overhead_ms": round(http_json - raw, 4),
        "throughput_8_clients_rps": round(rps, 1),
        "failed_requests": failed,
        "agent_rss_mib": round(rss / 2**20, 1),
    }
    print(f"{'figure':<28}{'value':>12}")
    for name, value in figures.items():
        print(f"{name:<28}{value:>12}")
    print(json.dumps({"benchmark": "agent", "figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
