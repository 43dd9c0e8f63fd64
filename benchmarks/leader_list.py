"""The device list's p99 when the measured server is the elected worker (every single-worker fleet):
its alert and summary rounds run in the serving process every ``summary_interval_s`` while requests
wait for the GIL. Two code trees side by side in one run (e.g. main and this branch), each serving
its own copy of one fleet database as the only worker, so each leads and runs the rounds; the
requests go to them in turn (A, B, A, B, ...) so load on the shared machine lands on both. The first
rounds (thousands of silent alerts opened, every retained document sent) are waited out first.

    PYTHONPATH=$PWD python -m benchmarks.leader_list /path/to/api.db before=/work/main after=$PWD
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.device_list import http_figures
from converter.keys import generate_key_pair
from edgefleet.mosquitto import MosquittoBroker
from edgefleet.stack import FleetProcess


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("database", type=Path, help="a fleet SQLite database (each tree serves a copy)")
    parser.add_argument("trees", nargs="+", help="label=path of a code tree to serve with")
    parser.add_argument("--requests", type=int, default=200, help="requests per case and server")
    parser.add_argument("--warm-s", type=float, default=30, help="wait for the first rounds to pass")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="leader-list-"))
    key = generate_key_pair(workdir).public_path
    processes: dict[str, FleetProcess] = {}
    with MosquittoBroker(workdir / "mosquitto") as broker:
        try:
            for n, tree in enumerate(args.trees):
                label, root = tree.split("=", 1)
                copy = workdir / f"{label}.db"
                shutil.copyfile(args.database, copy)
                process = FleetProcess(
                    workdir / label,
                    broker.port,
                    key,
                    mqtt_host=broker.host,
                    db_url=f"sqlite:///{copy}",
                    client_id=f"leader-list-{n}",
                    module="fleet",
                )
                process.env["PYTHONPATH"] = root
                process.start_and_wait(120)
                processes[label] = process
            for label, process in processes.items():
                leads = requests.get(f"{process.url}/api/v1/cluster", timeout=30).json()["this_worker_leads"]
                assert leads, f"{label} does not lead"
            time.sleep(args.warm_s)
            with requests.get(f"{next(iter(processes.values())).url}/api/v1/summary", timeout=60) as response:
                devices_n = int(response.json()["devices"])
            figures = http_figures(
                requests.Session(), {label: p.url for label, p in processes.items()}, devices_n, args.requests
            )
        finally:
            for process in processes.values():
                process.stop(30)
    print(f"{'case':<16}" + "".join(f"{label + ' p50/p99 ms':>24}" for label in processes))
    for case in ("first_page", "filtered_page", "tag_search_page", "page_of_1000"):
        cells = [figures[label][case] for label in processes]
        print(f"{case:<16}" + "".join(f"{c['p50_ms']:>12.1f}/{c['p99_ms']:<11.1f}" for c in cells))
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"benchmark": "leader_list", "figures": figures}))


if __name__ == "__main__":
    main()
