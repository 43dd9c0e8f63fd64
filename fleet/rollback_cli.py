"""``edgefleet model rollback-token``: sign a rollback grant on the operator's machine (with the
operator key, which never goes to the fleet), then hand it to the fleet or write it to a file."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet.errors import FleetError


def add_parser(model_commands: Any, fleet_url: argparse.ArgumentParser) -> None:
    token = model_commands.add_parser(
        "rollback-token",
        parents=[fleet_url],
        help="allow devices to move back to an older model (signed with the operator key)",
        description="Devices refuse a desired state that names an older version of the model they "
        "run (a replay could undo a fix), except one step back to the model they ran just before. "
        "This signs a grant that lets the named devices (or all) install NAME VERSION until it "
        "expires, and stores it on the fleet, which serves it in their desired state.",
    )
    token.add_argument("name", metavar="NAME")
    token.add_argument("version", metavar="VERSION")
    which = token.add_mutually_exclusive_group(required=True)
    which.add_argument("--device", action="append", dest="devices", metavar="ID", help="repeatable")
    which.add_argument("--all", action="store_true", help="every device")
    token.add_argument("--key", required=True, metavar="FILE", help="the operator's private key")
    token.add_argument("--expires", default="24h", metavar="DURATION", help="30m, 24h, 7d (default 24h)")
    token.add_argument("--sha256", default=None, metavar="HEX", help="only this bundle of NAME VERSION")
    token.add_argument(
        "--out", default=None, metavar="FILE", help="write the signed grant here instead of sending it"
    )
    token.set_defaults(handler=rollback_token)


def rollback_token(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pydantic import ValidationError

    from fleet.operator_cli import _client
    from protocol.rollback import RollbackGrant, parse_duration_s, sign_grant
    from protocol.signing import load_private_key
    from protocol.validation import describe_first_error

    try:
        lifetime = timedelta(seconds=parse_duration_s(args.expires))
    except ValueError as exc:
        raise FleetError(f"--expires: {exc}") from exc
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        grant = RollbackGrant(
            name=args.name,
            version=args.version,
            sha256=args.sha256,
            devices=None if args.all else args.devices,
            issued_at=now - timedelta(minutes=5),  # a device clock a little behind still accepts it
            expires_at=now + lifetime,
        )
    except ValidationError as exc:
        raise FleetError(describe_first_error(exc, default="grant")) from exc
    signed = sign_grant(load_private_key(Path(args.key)), grant)
    scope = "every device" if grant.devices is None else ", ".join(grant.devices)
    if args.out:
        Path(args.out).write_text(signed.model_dump_json() + "\n")
        print(f"wrote a rollback grant for {grant.name} {grant.version} ({scope}) to {args.out}")
        return 0
    path = f"/api/v1/models/{grant.name}/{grant.version}/rollback-grants"
    _client(args)._request("POST", path, json=signed.model_dump(mode="json"))
    print(
        f"the fleet keeps a rollback grant for {grant.name} {grant.version} ({scope}) until "
        f"{grant.expires_at.isoformat()}"
    )
    return 0
