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
    serve.add_argument("--mqtt-username", default=None, help="broker user name of the fleet")
    serve.add_argument(
        "--mqtt-password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="file holding the broker password",
    )
    serve.add_argument(
        "--shared-group",
        default=None,
        metavar="NAME",
        help="MQTT v5 shared subscription group, so several `fleet serve` workers split the stream",
    )
    serve.add_argument(
        "--tokens",
        type=Path,
        default=None,
        metavar="FILE",
        help="operator tokens, lines of 'ROLE NAME TOKEN' (roles viewer, operator, admin); "
        "without it the API is open",
    )
    serve.add_argument(
        "--alerts", type=Path, default=None, metavar="FILE", help="alert rules (TOML); see docs/fleet.md"
    )
    serve.add_argument(
        "--homeassistant", action="store_true", help="publish Home Assistant MQTT discovery configs"
    )
    serve.add_argument(
        "--rollout-tick", type=float, default=5.0, metavar="S", help="how often rollouts are judged (5)"
    )
    serve.add_argument(
        "--raw-retention-days", type=float, default=14, metavar="D", help="raw telemetry kept (14 days)"
    )
    serve.add_argument(
        "--hourly-retention-days", type=float, default=400, metavar="D", help="hourly rollups kept (400)"
    )
    serve.set_defaults(handler=_serve)

    fleet_url = argparse.ArgumentParser(add_help=False)
    fleet_url.add_argument(
        "--fleet",
        default=None,
        metavar="URL",
        help="fleet API base URL (default $EDGEFLEET_FLEET_URL or http://127.0.0.1:8080)",
    )
    fleet_url.add_argument(
        "--token",
        default=None,
        help="operator token (default $EDGEFLEET_TOKEN; needed when the fleet has tokens)",
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
    delete = model_commands.add_parser(
        "delete", parents=[fleet_url], help="delete a model version (refused while deployed)"
    )
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("version", metavar="VERSION")
    delete.set_defaults(handler=_model_delete)

    device = commands.add_parser(
        "device",
        help="inspect devices",
        description="Inspect the devices the fleet knows: presence, model, update state, latest telemetry.",
    )
    device_commands = device.add_subparsers(dest="device_command", metavar="COMMAND", required=True)
    devices = device_commands.add_parser("list", parents=[fleet_url], help="list devices and their health")
    devices.set_defaults(handler=_device_list)
    add = device_commands.add_parser(
        "add",
        parents=[fleet_url],
        help="provision a device: secret, Mosquitto password-file line and ACL, agent config",
    )
    add.add_argument("device_id", metavar="ID")
    add.add_argument("--group", default=None)
    add.add_argument("--tag", action="append", default=[], dest="tags", metavar="TAG", help="repeatable")
    add.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write DIR/ID.passwd, DIR/edgefleet.acl and DIR/ID-agent.toml",
    )
    add.set_defaults(handler=_device_add)

    rollout = commands.add_parser(
        "rollout",
        help="gated rollouts of a model to devices",
        description="Roll a model out in waves (default 1 device, 10%%, 50%%, all); each wave is judged "
        "on its devices' telemetry after a soak time, then promoted, halted or rolled back.",
    )
    rollout_commands = rollout.add_subparsers(dest="rollout_command", metavar="COMMAND", required=True)
    start = rollout_commands.add_parser("start", parents=[fleet_url], help="start a rollout")
    start.add_argument("name", metavar="NAME")
    start.add_argument("version", metavar="VERSION")
    which = start.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every known device")
    which.add_argument("--group", default=None, help="devices in this group")
    which.add_argument("--tag", action="append", dest="tags", metavar="TAG", help="devices with every tag")
    which.add_argument("--device", action="append", dest="devices", metavar="ID", help="these devices")
    start.add_argument("--waves", default="1,10%,50%,100%", help="comma-separated counts or percentages")
    start.add_argument("--soak", type=float, default=None, metavar="S", help="soak seconds per wave (600)")
    start.add_argument("--on-failure", choices=["rollback", "halt"], default=None)
    start.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a gate, e.g. max_error_rate=0.01, max_latency_p95_ratio=1.2; repeatable",
    )
    start.set_defaults(handler=_rollout_start)
    show = rollout_commands.add_parser("status", parents=[fleet_url], help="one rollout, or all of them")
    show.add_argument("rollout_id", type=int, nargs="?", metavar="ID")
    show.set_defaults(handler=_rollout_status)
    for action, text in (
        ("pause", "stop promoting; the current wave stays"),
        ("resume", "continue; the current wave's soak starts over"),
        ("abort", "stop for good; devices keep what they were given"),
        ("rollback", "give every device the rollout reached its previous model back"),
    ):
        sub = rollout_commands.add_parser(action, parents=[fleet_url], help=text)
        sub.add_argument("rollout_id", type=int, metavar="ID")
        sub.add_argument("--reason", default=None)
        sub.set_defaults(handler=_rollout_action, action=action)


def _parse_listen(value: str) -> tuple[str, int]:
    from fleet.errors import FleetError

    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise FleetError(f"--listen {value!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _read_secret(path: Path | None) -> str | None:
    from fleet.errors import FleetError

    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise FleetError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fleet.alerts import load_rules
    from fleet.config import FleetConfig, MqttSettings
    from fleet.errors import FleetError
    from fleet.server import serve

    host, port = _parse_listen(args.listen)
    try:
        mqtt = MqttSettings(
            host=args.mqtt_host,
            port=args.mqtt_port,
            topic_prefix=args.topic_prefix,
            username=args.mqtt_username,
            password=_read_secret(args.mqtt_password_file),
            shared_group=args.shared_group,
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
            tokens_file=args.tokens,
            rollout_tick_s=args.rollout_tick,
            raw_retention_days=args.raw_retention_days,
            hourly_retention_days=args.hourly_retention_days,
            homeassistant_discovery=args.homeassistant,
            **({"alerts": load_rules(args.alerts)} if args.alerts else {}),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FleetError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    return serve(config)


def _client(args: argparse.Namespace) -> Any:
    import os

    from fleet.client import TOKEN_ENV, FleetClient, default_fleet_url

    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV)
    return FleetClient(args.fleet or default_fleet_url(), token=token)


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


def _model_delete(args: argparse.Namespace) -> int:
    _client(args).delete_model(args.name, args.version)
    print(f"deleted {args.name} {args.version}")
    return 0


def _device_add(args: argparse.Namespace) -> int:
    body = {"device_id": args.device_id, "group": args.group, "tags": args.tags}
    answer = _client(args).add_device(body)
    print(f"device {answer['device_id']} provisioned; its secret (shown once): {answer['secret']}\n")
    print("# append to Mosquitto's password_file, then reload mosquitto (SIGHUP):")
    print(answer["password_file_line"] + "\n")
    print("# Mosquitto acl_file (the same for every device):")
    print(answer["acl"])
    print("# /etc/edgefleet/agent.toml on the device:")
    print(answer["agent_config"])
    print(f"# {answer['tls_note']}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.device_id}.passwd").write_text(answer["password_file_line"] + "\n")
        (args.out / "edgefleet.acl").write_text(answer["acl"])
        config = args.out / f"{args.device_id}-agent.toml"
        config.write_text(answer["agent_config"])
        config.chmod(0o600)
        print(f"# written to {args.out}")
    return 0


def _gate_overrides(items: list[str]) -> dict[str, Any]:
    from fleet.errors import FleetError

    gates: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise FleetError(f"--gate {item!r} is not NAME=VALUE")
        try:
            gates[key.strip()] = float(value)
        except ValueError:
            gates[key.strip()] = value.strip()
    return gates


def _rollout_start(args: argparse.Namespace) -> int:
    target: dict[str, Any]
    if args.all:
        target = {"all": True}
    elif args.group:
        target = {"group": args.group}
    elif args.tags:
        target = {"tags": args.tags}
    else:
        target = {"devices": args.devices}
    gates = _gate_overrides(args.gate)
    if args.soak is not None:
        gates["soak_s"] = args.soak
    if args.on_failure:
        gates["on_failure"] = args.on_failure
    body = {
        "name": args.name,
        "version": args.version,
        "target": target,
        "waves": [w.strip() for w in args.waves.split(",") if w.strip()],
        "gates": gates,
    }
    view = _client(args).start_rollout(body)
    print(
        f"rollout {view['id']} of {view['name']} {view['version']} started: {view['devices_total']} devices, "
        f"waves {view['waves']}, soak {view['gates']['soak_s']:.0f} s"
    )
    return 0


def _rollout_line(view: dict[str, Any]) -> list[str]:
    waves = view["waves"]
    return [
        str(view["id"]),
        f"{view['name']} {view['version']}",
        view["state"],
        f"{view['wave'] + 1}/{len(waves)}",
        f"{view['devices_on_target']}/{view['devices_assigned']}/{view['devices_total']}",
        view.get("reason") or "-",
    ]


def _rollout_status(args: argparse.Namespace) -> int:
    client = _client(args)
    header = ["ID", "MODEL", "STATE", "WAVE", "ON/ASSIGNED/TOTAL", "REASON"]
    if args.rollout_id is None:
        _print_table(header, [_rollout_line(v) for v in client.rollouts()])
        return 0
    view = client.rollout(args.rollout_id)
    _print_table(header, [_rollout_line(view)])
    for gate in view.get("last_gates") or []:
        mark = "ok  " if gate["ok"] else "FAIL"
        value = "-" if gate["value"] is None else f"{gate['value']:.3g}"
        print(f"  {mark} {gate['gate']:<22} {value:>8} (limit {gate['limit']})  {gate['detail']}")
    return 0


def _rollout_action(args: argparse.Namespace) -> int:
    view = _client(args).rollout_action(args.rollout_id, args.action, args.reason)
    print(f"rollout {view['id']}: {view['state']} ({view.get('reason') or ''})")
    return 0
