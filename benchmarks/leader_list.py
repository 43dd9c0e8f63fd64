"""The device list's p99 when the measured server is the elected worker (every single-worker fleet):
its alert and summary rounds run in the serving process every ``summary_interval_s`` while requests
wait for the GIL. Two code trees in one run (e.g. main and this branch), one at a time (A, B, A, B
with ``--repeat``: a second server's rounds would take the other's CPU), each serving its own copy
of one fleet database as the only worker, so it leads and runs the rounds. The first rounds
(thousands of silent alerts opened, every retained document sent) are waited out first; 600
requests per case span about three 10 s rounds.

    PYTHONPATH=$PWD python -m benchmarks.leader_list /path/to/api.db before=/work/main after=$PWD
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from benchmarks.device_list import CASES, http_figures
from converter.keys import generate_key_pair
from edgefleet.mosquitto import MosquittoBroker
from edgefleet.stack import FleetProcess

CASE_NAMES = tuple(name for name, _ in CASES)


def serve_one(workdir: Path, broker: MosquittoBroker, key: Path, database: Path, tree: str) -> FleetProcess:
    """``fleet serve`` from the code tree ``label=path`` on a fresh copy of the database."""
    label, root = tree.split("=", 1)
    copy = workdir / f"{label}.db"
    shutil.copyfile(database, copy)
    process = FleetProcess(
        workdir / label, broker.port, key, mqtt_host=broker.host, db_url=f"sqlite:///{copy}", module="fleet"
    )
    process.env["PYTHONPATH"] = root
    process.start_and_wait(120)
    leads = requests.get(f"{process.url}/api/v1/cluster", timeout=30).json()["this_worker_leads"]
    assert leads, f"{label} does not lead"
    return process


def measure(
    args: argparse.Namespace, broker: MosquittoBroker, key: Path, workdir: Path, tree: str
) -> dict[str, Any]:
    process = serve_one(workdir, broker, key, args.database, tree)
    try:
        time.sleep(args.warm_s)
        with requests.get(f"{process.url}/api/v1/summary", timeout=60) as response:
            devices_n = int(response.json()["devices"])
        figures: dict[str, Any] = http_figures(
            requests.Session(), {"x": process.url}, devices_n, args.requests
        )["x"]
        return figures
    finally:
        process.stop(30)
        shutil.rmtree(workdir / tree.split("=", 1)[0], ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("database", type=Path, help="a fleet SQLite database (each tree serves a copy)")
    parser.add_argument("trees", nargs="+", help="label=path of a code tree to serve with")
    parser.add_argument("--requests", type=int, default=600, help="requests per case (600: about 3 rounds)")
    parser.add_argument("--warm-s", type=float, default=30, help="wait for the first rounds to pass")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the trees (A, B, A, B, ...)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="leader-list-"))
    key = generate_key_pair(workdir).public_path
    runs: list[tuple[str, dict[str, Any]]] = []
    with MosquittoBroker(workdir / "mosquitto") as broker:
        for _ in range(args.repeat):
            for tree in args.trees:
                runs.append((tree.split("=", 1)[0], measure(args, broker, key, workdir, tree)))
    print(f"{'run':<10}" + "".join(f"{case + ' p50/p99':>28}" for case in CASE_NAMES))
    for label, figures in runs:
        cells = "".join(f"{figures[c]['p50_ms']:>19.1f}/{figures[c]['p99_ms']:<8.1f}" for c in CASE_NAMES)
        print(f"{label:<10}{cells}")
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps(
            {"benchmark": "leader_list", "figures": {f"{n}_{label}": f for n, (label, f) in enumerate(runs)}}
        )
    )


if __name__ == "__main__":
    main()
