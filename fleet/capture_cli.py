"""``edgefleet capture``: see what devices captured, export it for ``convert``, set the policy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleet.errors import FleetError


def add_parser(commands: Any, fleet_url: argparse.ArgumentParser) -> None:
    capture = commands.add_parser(
        "capture",
        help="data captured on devices for retraining",
        description="Devices with capture on keep a sample of what they served and upload it to the "
        "fleet. List it, export one model version's samples as calibration data for "
        "`edgefleet convert`, and switch capture on or off for a device or a group.",
    )
    sub = capture.add_subparsers(dest="capture_command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", parents=[fleet_url], help="samples per model version")
    listing.set_defaults(handler=capture_list)
    export = sub.add_parser(
        "export",
        parents=[fleet_url],
        help="write one model version's samples for `edgefleet convert --calibration`",
    )
    export.add_argument("name", metavar="MODEL")
    export.add_argument("version", metavar="VERSION")
    export.add_argument("--out", required=True, type=Path, metavar="FILE")
    export.add_argument(
        "--format", choices=("npz", "csv"), default="npz", help="csv: single-input tabular models only"
    )
    export.set_defaults(handler=capture_export)
    for action, text in (("enable", "switch capture on"), ("disable", "switch capture off")):
        sub_parser = sub.add_parser(action, parents=[fleet_url], help=f"{text} for a device or a group")
        which = sub_parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--device", metavar="ID")
        which.add_argument("--group", metavar="NAME")
        if action == "enable":
            sub_parser.add_argument("--rate", type=float, default=0.01, help="share kept at random")
            sub_parser.add_argument("--low-confidence-below", type=float, default=None, metavar="P")
            sub_parser.add_argument("--out-of-range", action="store_true", help="keep out-of-range inputs")
            sub_parser.add_argument("--drift-above", type=float, default=None, metavar="PSI")
        sub_parser.set_defaults(handler=capture_policy, enable=action == "enable")
    clear = sub.add_parser(
        "clear", parents=[fleet_url], help="remove a device's or group's policy (agent.toml decides again)"
    )
    which = clear.add_mutually_exclusive_group(required=True)
    which.add_argument("--device", metavar="ID")
    which.add_argument("--group", metavar="NAME")
    clear.set_defaults(handler=capture_clear)


def _client(args: argparse.Namespace) -> Any:
    from fleet.operator_cli import _client as client

    return client(args)


def capture_list(args: argparse.Namespace) -> int:
    summary = _client(args)._request("GET", "/api/v1/capture").json()
    if not summary["models"]:
        print("no samples captured yet")
    for entry in summary["models"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(entry["reasons"].items()))
        print(
            f"{entry['name']} {entry['version']}: {entry['samples']} samples ({reasons}); "
            f"last {entry['last']}"
        )
    for device, dropped in sorted(summary["dropped"].items()):
        if dropped:
            print(f"device {device} dropped {dropped} samples (its store was full, or capture fell behind)")
    for policy in summary["policies"]:
        print(f"policy {policy['target']}: {policy['policy']}")
    return 0


def capture_export(args: argparse.Namespace) -> int:
    response = _client(args)._request(
        "GET", f"/api/v1/capture/{args.name}/{args.version}/export", params={"format": args.format}
    )
    try:
        args.out.write_bytes(response.content)
    except OSError as exc:
        raise FleetError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    skipped = int(response.headers.get("X-Skipped-Quantized", "0"))
    note = f"; {skipped} sent already quantized were left out" if skipped else ""
    print(f"wrote {response.headers.get('X-Samples', '?')} samples to {args.out}{note}")
    return 0


def _target(args: argparse.Namespace) -> str:
    return f"/api/v1/devices/{args.device}/capture" if args.device else f"/api/v1/groups/{args.group}/capture"


def capture_policy(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"enabled": args.enable}
    if args.enable:
        body.update(
            rate=args.rate,
            low_confidence_below=args.low_confidence_below,
            out_of_range=args.out_of_range,
            drift_above=args.drift_above,
        )
    policy = _client(args)._request("PUT", _target(args), json=body).json()
    print(f"capture policy for {args.device or 'group ' + args.group}: {policy}")
    return 0


def capture_clear(args: argparse.Namespace) -> int:
    _client(args)._request("DELETE", _target(args))
    print(f"capture policy removed for {args.device or 'group ' + args.group}")
    return 0
