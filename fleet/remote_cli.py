"""``edgefleet device show``, ``device logs`` and ``device config``: thin clients of the remote
API (``fleet.api.remote``). Nothing heavy is imported until a command runs."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _client(args: argparse.Namespace) -> Any:
    from fleet.operator_cli import _client as client

    return client(args)


def since_time(text: str) -> str:
    """``10m``, ``2h``, ``1d`` before now, or an ISO 8601 time, as ISO 8601."""
    from datetime import UTC, datetime, timedelta

    from fleet.errors import FleetError

    found = _DURATION.match(text)
    if found:
        ago = timedelta(seconds=float(found.group(1)) * _UNIT_S[found.group(2)])
        return (datetime.now(UTC) - ago).isoformat()
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise FleetError(f"--since {text!r}: give a duration (30s, 10m, 2h, 1d) or an ISO 8601 time") from exc


def parse_value(text: str) -> bool | int | float | str:
    """A TOML-like scalar: true/false, an integer, a number, else a string."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip('"')


def settings_from(items: list[str], file: Path | None) -> dict[str, dict[str, Any]]:
    import tomllib

    from fleet.errors import FleetError

    settings: dict[str, dict[str, Any]] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise FleetError(f"cannot read {file} as TOML: {exc}") from exc
        for section, values in data.items():
            if not isinstance(values, dict):
                raise FleetError(f"{file}: {section} is not a [section]; settings are section.key = value")
            settings[section] = dict(values)
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise FleetError(f"--set {item!r}: expected section.key=value, e.g. telemetry.interval_s=30")
        settings.setdefault(section, {})[name] = parse_value(value.strip())
    return settings


def device_logs(args: argparse.Namespace) -> int:
    from fleet.errors import FleetError

    client = _client(args)
    body: dict[str, Any] = {"lines": args.lines, "level": args.level, "max_bytes": args.max_bytes}
    if args.since:
        body["since"] = since_time(args.since)
    ticket = client._request("POST", f"/api/v1/devices/{args.device_id}/logs", json=body).json()
    path = f"/api/v1/devices/{args.device_id}/logs/{ticket['request_id']}"
    deadline = time.monotonic() + args.wait
    while True:
        answer = client._request("GET", path).json()
        if answer["state"] != "pending":
            break
        if time.monotonic() > deadline:
            raise FleetError(
                f"device {args.device_id} did not answer within {args.wait:.0f}s (offline?); the request "
                f"stays open: GET {path}"
            )
        time.sleep(0.5)
    if answer["error"]:
        raise FleetError(f"device {args.device_id} could not send its log: {answer['error']}")
    print(answer["text"] or "", end="")
    if answer["truncated"]:
        print(f"(older lines left out: more than {args.max_bytes} bytes matched)")
    return 0


def device_config(args: argparse.Namespace) -> int:
    from fleet.errors import FleetError

    client = _client(args)
    path = f"/api/v1/groups/{args.group}/config" if args.group else f"/api/v1/devices/{args.device_id}/config"
    if args.clear:
        result = client._request("DELETE", path).json()
    else:
        settings = settings_from(args.set or [], args.file)
        if not settings:
            raise FleetError("nothing to set: give --set section.key=value, --file FILE or --clear")
        result = client._request("PUT", path, json={"settings": settings}).json()
    config = result["config"]
    what = f"revision {config['revision'][:12]}: {config['settings']}" if config else "cleared"
    notified = ", ".join(result["devices_notified"]) or "none"
    print(f"remote config of {result['target']} {what}; notified: {notified}")
    return 0


def device_show(args: argparse.Namespace) -> int:
    client = _client(args)
    device = client._request("GET", f"/api/v1/devices/{args.device_id}").json()
    config = client._request("GET", f"/api/v1/devices/{args.device_id}/config").json()
    model = device.get("model") or {}
    desired = device.get("desired") or {}
    print(f"device        {device['device_id']} ({device['state']}, {device['presence']})")
    print(f"group, tags   {device.get('group') or '-'}, {', '.join(device.get('tags') or []) or '-'}")
    print(f"agent         {device.get('agent_version') or '-'} on {device.get('runtime') or '-'}")
    serving = f"{model.get('name', '-')} {model.get('version', '')}"
    print(f"model         {serving}  desired {desired.get('name', '-')} {desired.get('version', '')}")
    print(
        f"update state  {device.get('update_state') or '-'}   last seen {device.get('last_seen') or 'never'}"
    )
    wanted = config["desired"]
    print(
        "config        "
        + (
            f"{wanted['settings']} (revision {wanted['revision'][:12]}, from {config['source']})"
            if wanted
            else "agent.toml only"
        )
    )
    report = config["report"]
    if report:
        print(f"config report {report['outcome']} revision {report['revision'][:12]} at {report['ts']}")
        if report.get("reason"):
            print(f"  reason: {report['reason']}")
    print(f"in sync       {'yes' if config['in_sync'] else 'no'}")
    return 0


def add_parsers(device_commands: Any, fleet_url: argparse.ArgumentParser) -> None:
    show = device_commands.add_parser(
        "show", parents=[fleet_url], help="one device: model, state, remote config"
    )
    show.add_argument("device_id", metavar="ID")
    show.set_defaults(handler=device_show)

    logs = device_commands.add_parser(
        "logs", parents=[fleet_url], help="fetch a device's recent log over MQTT (secrets redacted)"
    )
    logs.add_argument("device_id", metavar="ID")
    logs.add_argument("--lines", type=int, default=200, metavar="N", help="the newest N lines (200)")
    logs.add_argument("--level", default="info", choices=["debug", "info", "warning", "error", "critical"])
    logs.add_argument("--since", default=None, metavar="WHEN", help="10m, 2h, 1d ago, or an ISO 8601 time")
    logs.add_argument(
        "--max-bytes", type=int, default=256 * 1024, metavar="B", help="at most B bytes of text"
    )
    logs.add_argument(
        "--wait", type=float, default=30, metavar="S", help="wait S seconds for the answer (30)"
    )
    logs.set_defaults(handler=device_logs)

    config = device_commands.add_parser(
        "config", parents=[fleet_url], help="set the remotely settable agent.toml keys of a device or group"
    )
    which = config.add_mutually_exclusive_group(required=True)
    which.add_argument("device_id", metavar="ID", nargs="?", default=None)
    which.add_argument("--group", default=None, help="every device in this group without its own config")
    config.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="repeatable")
    config.add_argument(
        "--file", type=Path, default=None, metavar="FILE", help="TOML with the [sections] to set"
    )
    config.add_argument("--clear", action="store_true", help="drop the remote config (agent.toml alone)")
    config.set_defaults(handler=device_config)
