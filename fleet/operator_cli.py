"""The operator's commands (``model``, ``device``, ``rollout``): thin clients of the fleet's HTTP API
that print tables. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def _client(args: argparse.Namespace) -> Any:
    import os

    from fleet.client import TOKEN_ENV, FleetClient, default_fleet_url

    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV)
    return FleetClient(args.fleet or default_fleet_url(), token=token)


def model_push(args: argparse.Namespace) -> int:
    info, created = _client(args).push(args.bundle)
    verb = "stored" if created else "already stored"
    print(f"{verb}: {info['name']} {info['version']}  sha256 {info['sha256']}  {info['size']} bytes")
    return 0


def model_list(args: argparse.Namespace) -> int:
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


def model_deploy(args: argparse.Namespace) -> int:
    result = _client(args).deploy(args.name, args.version, args.device)
    scope = f"device {args.device}" if args.device else "the whole fleet (default)"
    notified = ", ".join(result["devices_notified"]) or "none yet"
    print(f"deployed {result['name']} {result['version']} to {scope}; notified: {notified}")
    if result.get("devices_not_notified"):
        print(
            f"not notified (broker unavailable; they will see it on their next poll): "
            f"{', '.join(result['devices_not_notified'])}"
        )
    _print_runtime_notes(result)
    return 0


def _print_runtime_notes(answer: dict[str, Any]) -> None:
    """The devices a deployment or rollout skipped (their runtime cannot load the model), and the
    ones it could not check."""
    for key, title in (
        ("devices_skipped", "skipped (runtime cannot load it)"),
        ("skipped", "skipped (runtime cannot load it)"),
        ("devices_unchecked", "warning, runtime not checked"),
    ):
        notes = answer.get(key) or []
        if notes:
            print(f"{title}: {len(notes)} device(s)")
        for note in notes:
            print(f"  {note['device_id']} ({note.get('runtime') or 'no runtime reported'}): {note['reason']}")


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


DEVICE_FILTERS = ("search", "group", "tag", "presence", "state", "model", "version", "sort")


def add_device_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--search", metavar="TEXT", help="the device id contains TEXT (any case)")
    parser.add_argument("--group", help="in this group")
    parser.add_argument("--tag", help="with this tag")
    parser.add_argument("--presence", choices=["online", "offline", "unknown"])
    parser.add_argument("--state", choices=["provisioned", "active", "revoked"])
    parser.add_argument("--model", metavar="NAME", help="serves a model of this name")
    parser.add_argument("--version", metavar="VERSION", help="serves this model version")
    parser.add_argument("--sort", choices=["device_id", "last_seen"], default="device_id")
    parser.add_argument("--reverse", action="store_true", help="descending (last_seen: newest first)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N devices (default: all)")


def device_list(args: argparse.Namespace) -> int:
    from fleet.errors import FleetError

    if args.limit is not None and args.limit < 1:
        raise FleetError(f"--limit must be at least 1, not {args.limit}")
    filters = {("q" if name == "search" else name): getattr(args, name) for name in DEVICE_FILTERS}
    if args.reverse:  # a flag, not "--sort -device_id": argparse would read that as an option
        filters["sort"] = f"-{args.sort}"
    rows = []
    for d in _client(args).devices(filters, most=args.limit):
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
                d.get("state") or "-",
                d["presence"],
                model,
                desired,
                d.get("update_state") or "-",
                latency,
                _fmt(t.get("cpu_percent"), "%"),
                _fmt(rss / 1048576 if rss is not None else None, "MiB"),
                _fmt(t.get("memory_used_percent"), "%"),
                d["last_seen"] or "never",
            ]
        )
    _print_table(
        [
            "DEVICE",
            "STATE",
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


def model_delete(args: argparse.Namespace) -> int:
    _client(args).delete_model(args.name, args.version)
    print(f"deleted {args.name} {args.version}")
    return 0


def device_add(args: argparse.Namespace) -> int:
    from fleet.errors import FleetError

    ca_cert, ca_key = getattr(args, "ca_cert", None), getattr(args, "ca_key", None)
    if (ca_cert is None) != (ca_key is None) or (ca_cert is not None and args.out is None):
        raise FleetError("--ca-cert and --ca-key go together, with --out DIR for the device's files")
    body = {"device_id": args.device_id, "group": args.group, "tags": args.tags}
    for key in ("fleet_url", "mqtt_host", "mqtt_port"):
        if getattr(args, key, None) is not None:
            body[key] = getattr(args, key)
    answer = _client(args).add_device(body)
    if ca_cert is not None and ca_key is not None:
        from fleet.device_certs import issue_device_cert, tls_toml

        issued = issue_device_cert(ca_cert, ca_key, args.device_id, args.out)
        answer["agent_config"] += tls_toml(args.device_id)
        print(
            f"# client certificate (CN={args.device_id}) in {issued.cert}, key in {issued.key}, CA in "
            f"{issued.ca}: install them in /etc/edgefleet/ and set [mqtt] port to the broker's TLS listener"
        )
    print(f"device {answer['device_id']} provisioned; its secret (shown once): {answer['secret']}\n")
    _print_broker(answer["broker"])
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


def _print_broker(broker: dict[str, Any]) -> None:
    if broker["applied"]:
        print(f"# broker: {broker['instructions']}\n")
    else:
        print("# to apply on the broker, by hand (the fleet does not keep its password file):")
        print(broker["instructions"] + "\n")


def device_identity(args: argparse.Namespace) -> int:
    """``device revoke|delete|rotate-secret ID``."""
    answer = _client(args).device_identity(args.device_id, args.action)
    if args.action == "rotate-secret":
        print(f"device {answer['device_id']}: new secret (shown once): {answer['secret']}")
        print("# set it as [mqtt] password (and [fleet] password if set) in the device's agent.toml")
    else:
        print(f"device {answer['device_id']} {answer['state']}")
    _print_broker(answer["broker"])
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


def rollout_start(args: argparse.Namespace) -> int:
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
    _print_runtime_notes(view)
    return 0


def _rollout_line(view: dict[str, Any]) -> list[str]:
    waves = view["waves"]
    return [
        str(view["id"]),
        f"{view['name']} {view['version']}",
        view["state"],
        f"{view['wave'] + 1}/{len(waves)}",
        f"{view['devices_on_target']}/{view['devices_assigned']}/{view['devices_total']}",
        str(len(view.get("skipped") or [])),
        view.get("reason") or "-",
    ]


def rollout_status(args: argparse.Namespace) -> int:
    client = _client(args)
    header = ["ID", "MODEL", "STATE", "WAVE", "ON/ASSIGNED/TOTAL", "SKIPPED", "REASON"]
    if args.rollout_id is None:
        _print_table(header, [_rollout_line(v) for v in client.rollouts()])
        return 0
    view = client.rollout(args.rollout_id)
    _print_table(header, [_rollout_line(view)])
    for gate in view.get("last_gates") or []:
        mark = "ok  " if gate["ok"] else "FAIL"
        value = "-" if gate["value"] is None else f"{gate['value']:.3g}"
        print(f"  {mark} {gate['gate']:<22} {value:>8} (limit {gate['limit']})  {gate['detail']}")
    _print_runtime_notes(view)
    return 0


def rollout_action(args: argparse.Namespace) -> int:
    view = _client(args).rollout_action(args.rollout_id, args.action, args.reason)
    print(f"rollout {view['id']}: {view['state']} ({view.get('reason') or ''})")
    return 0


def audit_list(args: argparse.Namespace) -> int:
    query = {
        key: value
        for key, value in (
            ("actor", args.actor),
            ("action", args.action),
            ("since", args.since),
            ("before", args.before),
            ("limit", args.limit),
        )
        if value is not None
    }
    entries = _client(args)._request("GET", "/api/v1/audit", params=query).json()
    rows = [
        [
            str(e["id"]),
            e["at"],
            f"{e['actor']} ({e['role'] or '-'})",
            e["action"],
            e["target"] or "-",
            e["client"] or "-",
        ]
        for e in entries
    ]
    _print_table(["ID", "AT", "ACTOR", "ACTION", "TARGET", "FROM"], rows)
    if len(entries) == args.limit:
        print(f"(more: --before {entries[-1]['id']})")
    return 0


def add_audit(commands: Any, fleet_url: argparse.ArgumentParser) -> None:
    audit = commands.add_parser(
        "audit", help="the audit log", description="Who did what to which target, when and from where."
    )
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    show = audit_commands.add_parser("list", parents=[fleet_url], help="newest first (operator or admin)")
    show.add_argument("--actor", default=None, help="only this token name or device id")
    show.add_argument("--action", default=None, help="only this action, e.g. deploy, rollout.start")
    show.add_argument("--since", default=None, metavar="TIME", help="only at or after this ISO 8601 time")
    show.add_argument("--limit", type=int, default=50, metavar="N", help="at most N entries (50)")
    show.add_argument("--before", type=int, default=None, metavar="ID", help="page on: entries older than ID")
    show.set_defaults(handler=audit_list)
