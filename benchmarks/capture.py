"""What data capture costs the agent: serving overhead, disk and bandwidth per sample.

Runs the real chain (Mosquitto, the fleet, two agents as processes, the digits CNN converted to
int8 by the real converter). One agent has capture off, the other captures every instance
(``rate = 1.0``, the worst case); both serve the same model, and the p50 of one
``POST /v1/predict`` (JSON, one instance, keep-alive) is measured on each, request by request
in turn, in rounds; the ratio is the median of the rounds' ratios. Then, with the fleet stopped
so that samples stay on the device: the capture store's bytes on disk per sample (SQLite pages
in use, after a checkpoint) and the upload's bytes per sample on the wire (gzip-compressed
batches of ``batch_size``). Last, the cost of ``Capture.offer`` itself, in this process, on the
same model.

Prints a table and, last, one line of JSON: ``{"benchmark": "capture", "figures": {...}}``.

    .venv/bin/python -m benchmarks.capture [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.agent import _push_and_deploy
from edgefleet.mosquitto import MosquittoBroker
from edgefleet.stack import AgentProcess, FleetProcess, convert_digits, run_edgefleet
from edgefleet.wait import wait_until

BATCH = 100
WARM_UP = 200
CAPTURE_ON = {"enabled": True, "rate": 1.0, "upload_interval_s": 1.0, "batch_size": BATCH}


def interleaved_p50(ports: dict[str, int], bodies: list[bytes], n: int) -> dict[str, float]:
    """p50 of one JSON predict on each agent, request by request in turn (keep-alive), so that
    both see the same moments of a shared machine; the bodies cycle through real instances."""
    conns = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=10) for name, port in ports.items()}
    times: dict[str, list[float]] = {name: [] for name in ports}
    try:
        for i in range(n):
            body = bodies[i % len(bodies)]
            for name, conn in conns.items():
                start = time.perf_counter()
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                times[name].append(time.perf_counter() - start)
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status} from the agent with capture {name}")
    finally:
        for conn in conns.values():
            conn.close()
    return {name: float(np.percentile(np.asarray(t) * 1000, 50)) for name, t in times.items()}


def _store_stats(state_dir: Path) -> tuple[int, int, int]:
    """(samples, payload bytes, bytes of the pages in use) of an agent's capture store, after a
    checkpoint; pages freed by uploaded samples are reused by SQLite and not counted."""
    path = state_dir / "capture.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count, payload = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM samples"
        ).fetchone()
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
    return int(count), int(payload), (int(pages) - int(free)) * int(size)


def _wire_bytes_per_sample(state_dir: Path, batch: int) -> float:
    with sqlite3.connect(state_dir / "capture.sqlite") as db:
        payloads = [
            bytes(r[0]) for r in db.execute("SELECT payload FROM samples ORDER BY id LIMIT ?", (batch,))
        ]
    body = b'{"schema_version":1,"kind":"capture","samples":[' + b",".join(payloads) + b"]}"
    return len(gzip.compress(body, compresslevel=6)) / len(payloads)


def _offer_cost_us(model_file: Path, x: np.ndarray[Any, Any], n: int) -> dict[str, float]:
    """Capture.offer per request in this process: off, and capturing every instance."""
    from agent.capture import Capture
    from agent.capture_config import CaptureConfig
    from agent.serving import ActiveModel
    from agent.store import ModelStore

    store = ModelStore(model_file)
    model = ActiveModel.load(store.read(store.read_pointer().active or ""), runtime="tflite-runtime")
    batch = x[np.newaxis]
    result = model.predict(batch)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in (("off", CaptureConfig()), ("rate_1", CaptureConfig(enabled=True, rate=1.0))):
            capture = Capture(config, Path(tmp) / f"{name}.sqlite").start()
            times = []
            for _ in range(n):
                start = time.perf_counter()
                capture.offer(model, [batch], result)
                times.append(time.perf_counter() - start)
            capture.stop()
            out[name] = float(np.percentile(np.asarray(times) * 1e6, 50))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per agent per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the two agents")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "converter.examples", "digits", str(work / "model")],
            check=True,
            capture_output=True,
        )
        run_edgefleet(["keys", "generate", "--out", str(work / "keys")])
        key, public = work / "keys" / "operator.key", work / "keys" / "operator.pub"
        bundle = work / "v1.bundle"
        convert_digits(work / "model", "1.0.0", key, bundle)
        with np.load(work / "model" / "evaluation.npz") as data:
            pool = data["x"].astype(np.float32)
        x = pool[0]
        bodies = [json.dumps({"inputs": instance.tolist()}).encode() for instance in pool]

        with MosquittoBroker(work / "mosquitto") as broker:
            fleet = FleetProcess(work / "fleet", broker.port, public)
            agents = {
                name: AgentProcess(
                    f"bench-{name}",
                    work / "devices",
                    fleet.url,
                    broker.port,
                    public,
                    telemetry_interval_s=60,
                    poll_interval_s=2,
                    settings={
                        "runtime": {"kind": "tflite-runtime"},
                        "update": {"probation_s": 0},
                        "capture": capture,
                    },
                )
                for name, capture in (("off", {}), ("on", CAPTURE_ON))
            }
            try:
                fleet.start_and_wait()
                for agent in agents.values():
                    agent.start_and_wait()
                _push_and_deploy(fleet.url, bundle, "1.0.0")
                for agent in agents.values():
                    agent.wait_for_version("1.0.0")
                ports = {name: agent.port for name, agent in agents.items()}
                interleaved_p50(ports, bodies, WARM_UP)
                p50s: dict[str, list[float]] = {"off": [], "on": []}
                for _ in range(args.rounds):
                    for name, value in interleaved_p50(ports, bodies, args.requests).items():
                        p50s[name].append(value)
                on_state = agents["on"].state_dir
                uploaded = wait_until(
                    lambda: _uploaded(fleet.url, WARM_UP + args.rounds * args.requests),
                    "the samples at the fleet",
                    300,
                    1,
                )
                fleet.stop()  # from here samples stay on the device
                stored_before = _store_stats(on_state)
                interleaved_p50({"on": agents["on"].port}, bodies, 1000)
                time.sleep(2.5)  # the writer commits within a second
                stored = _store_stats(on_state)
                wire = _wire_bytes_per_sample(on_state, BATCH)
            finally:
                for agent in agents.values():
                    agent.stop()
                fleet.stop()
        offer = _offer_cost_us(agents["on"].state_dir, x, 5000)

    off, on = float(np.median(p50s["off"])), float(np.median(p50s["on"]))
    # Paired by round (both agents measured request by request in turn): the shared machine's
    # load changes between rounds, much less within one.
    ratios = [b / a for a, b in zip(p50s["off"], p50s["on"], strict=True)]
    samples = stored[0] - stored_before[0]
    figures: dict[str, Any] = {
        "predict_p50_ms_capture_off": round(off, 4),
        "predict_p50_ms_capture_rate_1": round(on, 4),
        "p50_ratio_rate_1_vs_off": round(float(np.median(ratios)), 3),
        "p50_ratio_per_round": [round(r, 3) for r in ratios],
        "p50_ms_per_round_off": [round(v, 4) for v in p50s["off"]],
        "p50_ms_per_round_rate_1": [round(v, 4) for v in p50s["on"]],
        "samples_uploaded": uploaded,
        "samples_kept_while_fleet_down": samples,
        "disk_bytes_per_sample": round(stored[2] / max(1, stored[0]), 1),
        "payload_bytes_per_sample": round(stored[1] / max(1, stored[0]), 1),
        "wire_bytes_per_sample_gzip": round(wire, 1),
        "offer_us_p50_off": round(offer["off"], 2),
        "offer_us_p50_rate_1": round(offer["rate_1"], 2),
    }
    print(f"{'figure':<40}{'value':>30}")
    for name, shown in figures.items():
        print(f"{name:<40}{json.dumps(shown) if isinstance(shown, list) else str(shown):>30}")
    print(json.dumps({"benchmark": "capture", "figures": figures}))
    return 0


def _uploaded(fleet_url: str, expected: int) -> int | None:
    import requests

    response = requests.get(f"{fleet_url}/api/v1/capture", timeout=5)
    count = sum(m["samples"] for m in response.json()["models"]) if response.ok else 0
    return count if count >= expected else None


if __name__ == "__main__":
    sys.exit(main())
