"""Subcommands: ``fleet serve`` (the server) and the operator's ``model`` and ``device`` commands.

Heavy imports (FastAPI, SQLAlchemy, uvicorn, paho) happen inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from protocol.topics import DEFAULT_PREFIX

DEFAULT_DB = "sqlite:///./fleet.db"


def register(commands: Any) -> None:
    """Add ``fleet``, ``model`` and ``device`` to the ``edgefleet`` subparsers."""
    fleet = commands.add_parser(
        "fleet",
        help="run the fleet server",
        description="The fleet server: model registry, device registry, telemetry ingestion and dashboard.",
    )
    fleet_commands = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    serve = fleet_commands.add_parser(
        "serve",
        help="registry, HTTP API, dashboard and MQTT ingestion in one process",
        description="Serve the registry, the HTTP API and the dashboard, and ingest device telemetry from "
        "MQTT, in one process. Logs 'fleet listening on URL' when ready; SIGTERM or SIGINT stop it cleanly.",
    )
    serve.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy database URL (default {DEFAULT_DB})")
    serve.add_argument(
        "--listen", default="127.0.0.1:8080", help="HOST:PORT for HTTP (default 127.0.0.1:8080)"
    )
    serve.add_argument("--mqtt-host", default="127.0.0.1", help="MQTT broker host (default 127.0.0.1)")
    serve.add_argument("--mqtt-port", type=int, default=1883, help="MQTT broker port (default 1883)")
    serve.add_argument(
        "--topic-prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})"
    )
    serve.add_argument(
        "--mqtt-client-id",
        default=None,
        help="MQTT client id; keep it stable (default edgefleet-fleet-<hostname>)",
    )
    serve.add_argument(
        "--trusted-keys",
        type=Path,
        action="append",
        required=True,
        metavar="PATH",
        help="public key file, or directory of *.pub; repeatable",
    )
    serve.add_argument(
        "--artifacts",
        type=Path,
        default=Path("./artifacts"),
        help="directory for uploaded bundles (default ./artifacts)",
    )
    serve.add_argument(
        "--public-url",
        default=None,
        help="base URL devices use for bundle downloads (default http://<listen>)",
    )
    serve.set_defaults(handler=_serve)

    fleet_url = argparse.ArgumentParser(add_help=False)
    fleet_url.add_argument(
        "--fleet",
        default=None,
        metavar="URL",
        help="fleet API base URL (default $EDGEFLEET_FLEET_URL or http://127.0.0.1:8080)",
    )

    model = commands.add_parser(
        "model",
        help="manage models in the fleet registry",
        description="Upload signed bundles to the fleet, list them, and deploy them to devices.",
    )
    model_commands = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)
    push = model_commands.add_parser("push", parents=[fleet_url], help="upload a signed bundle")
    push.add_argument("bundle", type=Path, metavar="BUNDLE")
    push.set_defaults(handler=_model_push)
    listing = model_commands.add_parser("list", parents=[fleet_url], help="list registered models")
    listing.set_defaults(handler=_model_list)
    deploy = model_commands.add_parser("deploy", parents=[fleet_url], help="assign a model to devices")
    deploy.add_argument("name", metavar="NAME")
    deploy.add_argument("version", metavar="VERSION")
    deploy.add_argument(
        "--device",
        default=None,
        metavar="ID",
        help="one device; without it the model becomes the fleet-wide default",
    )
    deploy.set_defaults(handler=_model_deploy)

    device = commands.add_parser(
        "device",
        help="inspect devices",
        description="Inspect the devices the fleet knows: presence, model, update state, latest telemetry.",
    )
    device_commands = device.add_subparsers(dest="device_command", metavar="COMMAND", required=True)
    devices = device_commands.add_parser("list", parents=[fleet_url], help="list devices and their health")
    devices.set_defaults(handler=_device_list)


def _parse_listen(value: str) -> tuple[str, int]:
    from fleet.errors import FleetError

    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise FleetError(f"--listen {value!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fleet.config import FleetConfig, MqttSettings
    from fleet.errors import FleetError
    from fleet.server import serve

    host, port = _parse_listen(args.listen)
    try:
        mqtt = MqttSettings(
            host=args.mqtt_host,
            port=args.mqtt_port,
            topic_prefix=args.topic_prefix,
            **({"client_id": args.mqtt_client_id} if args.mqtt_client_id else {}),
        )
        config = FleetConfig(
            db_url=args.db,
            host=host,
            port=port,
            public_url=args.public_url,
            trusted_keys=args.trusted_keys,
            artifacts=args.artifacts,
            mqtt=mqtt,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FleetError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    return serve(config)


def _client(args: argparse.Namespace) -> Any:
    from fleet.client import FleetClient, default_fleet_url

    return FleetClient(args.fleet or default_fleet_url())


def _model_push(args: argparse.Namespace) -> int:
    info, created = _client(args).push(args.bundle)
    verb = "stored" if created else "already stored"
    print(f"{verb}: {info['name']} {info['version']}  sha256 {info['sha256']}  {info['size']} bytes")
    return 0


def _model_list(args: argparse.Namespace) -> int:
    models = _client(args).models()
    rows = [
        [
            m["name"],
            m["version"],
            m["task"],
            m["quantization"],
            str(m["size"]),
            m["sha256"][:12],
            m["uploaded_at"],
        ]
        for m in models
    ]
    _print_table(["NAME", "VERSION", "TASK", "QUANT", "SIZE", "SHA256", "UPLOADED"], rows)
    return 0


def _model_deploy(args: argparse.Namespace) -> int:
    result = _client(args).deploy(args.name, args.version, args.device)
    scope = f"device {args.device}" if args.device else "the whole fleet (default)"
    notified = ", ".join(result["devices_notified"]) or "none yet"
    print(f"deployed {result['name']} {result['version']} to {scope}; notified: {notified}")
    if result.get("devices_not_notified"):
        print(
            f"not notified (broker unavailable; they will see it on their next poll): "
            f"{', '.join(result['devices_not_notified'])}"
        )
    return 0


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _device_list(args: argparse.Namespace) -> int:
    rows = []
    for d in _client(args).devices():
        model = f"{d['model']['name']} {d['model']['version']}" if d.get("model") else "-"
        desired = f"{d['desired']['name']} {d['desired']['version']}" if d.get("desired") else "-"
        t = d.get("telemetry") or {}
        latency = (
            "/".join(_fmt(t.get(k)) for k in ("latency_p50", "latency_p95", "latency_p99")) if t else "-"
        )
        rss = t.get("process_rss_bytes")
        rows.append(
            [
                d["device_id"],
                d["presence"],
                model,
                desired,
                d.get("update_state") or "-",
                latency,
                _fmt(t.get("cpu_percent"), "%"),
                _fmt(rss / 1048576 if rss is not None else None, "MiB"),
                _fmt(t.get("memory_used_percent"), "%"),
                d["last_seen"],
            ]
        )
    _print_table(
        [
            "DEVICE",
            "PRESENCE",
            "MODEL",
            "DESIRED",
            "UPDATE",
            "P50/P95/P99 ms",
            "CPU",
            "RSS",
            "MEM",
            "LAST SEEN",
        ],
        rows,
    )
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for line in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
