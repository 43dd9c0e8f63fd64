"""``edgefleet demo`` command registration (the demo itself lives in ``edgefleet.demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run the whole chain on this machine: train, convert, fleet, two agents, two deployments",
        description=(
            "Train a small CNN on scikit-learn's digits, convert it to a signed int8 bundle, start a "
            "private Mosquitto, the fleet service and agents, deploy v1, send predictions, print "
            "telemetry as it arrives, then deploy v2 and show every device switch. Everything runs on "
            "loopback; Ctrl-C stops everything the demo started. Trained models and bundles are kept "
            "in the work folder and reused on the next run (use --fresh to start over)."
        ),
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("demo-run"), help="work folder (default: ./demo-run)"
    )
    parser.add_argument("--devices", type=int, default=2, help="number of agents to start (default: 2)")
    parser.add_argument("--fleet-port", type=int, default=None, help="fleet HTTP port (default: a free port)")
    parser.add_argument("--telemetry-interval", type=float, default=2.0, help="seconds per telemetry window")
    parser.add_argument("--exit-when-done", action="store_true", help="stop after the second deployment")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from edgefleet.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            workdir=args.workdir,
            devices=args.devices,
            fleet_port=args.fleet_port,
            telemetry_interval_s=args.telemetry_interval,
            stay=not args.exit_when_done,
            fresh=args.fresh,
        )
    )
    return 0
