"""Subcommands: ``fleet serve`` (the server) and the operator's ``model`` and ``device`` commands.

Heavy imports (FastAPI, SQLAlchemy, uvicorn, paho) happen inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleet import capture_cli, operator_cli, remote_cli, rollback_cli
from protocol.topics import DEFAULT_PREFIX
from protocol.validation import describe_first_error

DEFAULT_DB = "sqlite:///./fleet.db"


def register(commands: Any) -> None:
    """Add ``fleet``, ``model``, ``device``, ``rollout`` and ``audit`` to the ``edgefleet`` subparsers."""
    _add_serve(commands)
    fleet_url = _fleet_url_options()
    _add_model(commands, fleet_url)
    _add_device(commands, fleet_url)
    _add_rollout(commands, fleet_url)
    operator_cli.add_audit(commands, fleet_url)
    capture_cli.add_parser(commands, fleet_url)


def _add_serve(commands: Any) -> None:
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
        help="MQTT client id; keep it stable (default edgefleet-fleet- and a digest of the broker login)",
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
        "--mqtt-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="connect to the broker over TLS, verifying it against this PEM CA",
    )
    serve.add_argument("--mqtt-cert", type=Path, default=None, metavar="FILE", help="TLS client certificate")
    serve.add_argument("--mqtt-key", type=Path, default=None, metavar="FILE", help="its unencrypted key")
    serve.add_argument(
        "--shared-group",
        default=None,
        metavar="NAME",
        help="MQTT v5 shared subscription group, so several `fleet serve` workers split the stream",
    )
    serve.add_argument(
        "--ingest-writer",
        choices=("auto", "process", "thread"),
        default="auto",
        help="where device messages are decoded and stored: a child process (off the MQTT thread's "
        "interpreter lock, on a second core), or a thread; auto (default): a process for a SQLite "
        "file or PostgreSQL on two cores or more",
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
        "--metrics-per-device",
        type=int,
        nargs="?",
        const=1000,
        default=None,
        metavar="N",
        help="/metrics also exports each device's last seen and presence, for at most N devices "
        "(the most recently seen; default 1000, at most 10000)",
    )
    serve.add_argument(
        "--homeassistant", action="store_true", help="publish Home Assistant MQTT discovery configs"
    )
    serve.add_argument(
        "--rollout-tick", type=float, default=5.0, metavar="S", help="how often rollouts are judged (5)"
    )
    serve.add_argument(
        "--leader-lease", type=float, default=15.0, metavar="S", help="leader lease of the workers (15)"
    )
    serve.add_argument(
        "--leader-renew", type=float, default=5.0, metavar="S", help="how often it is renewed (5)"
    )
    serve.add_argument(
        "--raw-retention-days", type=float, default=14, metavar="D", help="raw telemetry kept (14 days)"
    )
    serve.add_argument(
        "--hourly-retention-days", type=float, default=400, metavar="D", help="hourly rollups kept (400)"
    )
    # No defaults here: FleetConfig's apply (this module imports no storage code).
    serve.add_argument(
        "--dead-letter-days", type=float, default=None, metavar="D", help="dead letters kept (30 days)"
    )
    serve.add_argument(
        "--dead-letter-cap",
        type=int,
        default=None,
        metavar="N",
        help="at most this many dead letters kept, the newest; enforced as they arrive (10000)",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="serve HTTPS with this PEM certificate (chain); needs --tls-key",
    )
    serve.add_argument(
        "--tls-key", type=Path, default=None, metavar="FILE", help="the unencrypted PEM key of --tls-cert"
    )
    serve.add_argument(
        "--broker-password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="Mosquitto's password_file, kept by the fleet: device add/rotate-secret/revoke/delete rewrite "
        "it and reload Mosquitto (needs --broker-pid-file or --broker-reload-command)",
    )
    serve.add_argument(
        "--broker-pid-file", type=Path, default=None, metavar="FILE", help="Mosquitto's pid_file (SIGHUP)"
    )
    serve.add_argument(
        "--broker-reload-command",
        default=None,
        metavar="CMD",
        help="reloads Mosquitto instead, e.g. 'sudo systemctl reload mosquitto'",
    )
    serve.set_defaults(handler=_serve)


def _fleet_url_options() -> argparse.ArgumentParser:
    """--fleet and --token, shared by every operator command."""
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
    return fleet_url


def _add_model(commands: Any, fleet_url: argparse.ArgumentParser) -> None:
    model = commands.add_parser(
        "model",
        help="manage models in the fleet registry",
        description="Upload signed bundles to the fleet, list them, and deploy them to devices.",
    )
    model_commands = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)
    push = model_commands.add_parser("push", parents=[fleet_url], help="upload a signed bundle")
    push.add_argument("bundle", type=Path, metavar="BUNDLE")
    push.set_defaults(handler=operator_cli.model_push)
    listing = model_commands.add_parser("list", parents=[fleet_url], help="list registered models")
    listing.set_defaults(handler=operator_cli.model_list)
    deploy = model_commands.add_parser("deploy", parents=[fleet_url], help="assign a model to devices")
    deploy.add_argument("name", metavar="NAME")
    deploy.add_argument("version", metavar="VERSION")
    deploy.add_argument(
        "--device",
        default=None,
        metavar="ID",
        help="one device; without it the model becomes the fleet-wide default",
    )
    deploy.set_defaults(handler=operator_cli.model_deploy)
    delete = model_commands.add_parser(
        "delete", parents=[fleet_url], help="delete a model version (refused while deployed)"
    )
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("version", metavar="VERSION")
    delete.set_defaults(handler=operator_cli.model_delete)
    rollback_cli.add_parser(model_commands, fleet_url)


def _add_device(commands: Any, fleet_url: argparse.ArgumentParser) -> None:
    device = commands.add_parser(
        "device",
        help="provision, inspect, revoke, delete devices and rotate their secrets",
        description="Provision devices, inspect them (state, presence, model, update state, latest "
        "telemetry), revoke or delete them and rotate their secrets.",
    )
    device_commands = device.add_subparsers(dest="device_command", metavar="COMMAND", required=True)
    devices = device_commands.add_parser(
        "list",
        parents=[fleet_url],
        help="list devices and their health (every page; filters are applied by the fleet)",
    )
    operator_cli.add_device_filters(devices)
    devices.set_defaults(handler=operator_cli.device_list)
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
    add.add_argument(
        "--ca-cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="operator CA certificate: also issue DIR/ID.crt + DIR/ID.key (CN=ID), the device's TLS "
        "identity for the broker, and add [mqtt.tls] to the agent config; needs --ca-key and --out",
    )
    add.add_argument("--ca-key", type=Path, default=None, metavar="FILE", help="the operator CA's key")
    add.add_argument(
        "--fleet-url",
        default=None,
        metavar="URL",
        help="the fleet as the device reaches it (default the fleet's --public-url; refused when that "
        "is loopback while the fleet is reached from other machines)",
    )
    add.add_argument(
        "--mqtt-host", default=None, metavar="HOST", help="the broker as the device reaches it (same rule)"
    )
    add.add_argument("--mqtt-port", type=int, default=None, metavar="PORT", help="its port")
    add.set_defaults(handler=operator_cli.device_add)
    for action, text in (
        ("revoke", "refuse the device's HTTP calls and remove its broker login; it stays listed"),
        ("delete", "forget the device: identity, broker login, status, telemetry and events"),
        ("rotate-secret", "a new secret (printed once); the old one stops working"),
    ):
        sub = device_commands.add_parser(action, parents=[fleet_url], help=text)
        sub.add_argument("device_id", metavar="ID")
        sub.set_defaults(handler=operator_cli.device_identity, action=action)
    remote_cli.add_parsers(device_commands, fleet_url)


def _add_rollout(commands: Any, fleet_url: argparse.ArgumentParser) -> None:
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
    start.set_defaults(handler=operator_cli.rollout_start)
    show = rollout_commands.add_parser("status", parents=[fleet_url], help="one rollout, or all of them")
    show.add_argument("rollout_id", type=int, nargs="?", metavar="ID")
    show.set_defaults(handler=operator_cli.rollout_status)
    for action, text in (
        ("pause", "stop promoting; the current wave stays"),
        ("resume", "continue; the current wave's soak starts over"),
        ("abort", "stop for good; devices keep what they were given"),
        ("rollback", "give every device the rollout reached its previous model back"),
    ):
        sub = rollout_commands.add_parser(action, parents=[fleet_url], help=text)
        sub.add_argument("rollout_id", type=int, metavar="ID")
        sub.add_argument("--reason", default=None)
        sub.set_defaults(handler=operator_cli.rollout_action, action=action)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fleet.alerts import load_rules
    from fleet.config import FleetConfig, MetricsSettings, MqttSettings, parse_listen, read_secret
    from fleet.errors import FleetError
    from fleet.server import serve

    host, port = parse_listen(args.listen)
    try:
        mqtt = MqttSettings(
            host=args.mqtt_host,
            port=args.mqtt_port,
            topic_prefix=args.topic_prefix,
            username=args.mqtt_username,
            password=read_secret(args.mqtt_password_file),
            shared_group=args.shared_group,
            writer=args.ingest_writer,
            ca_file=args.mqtt_ca,
            cert_file=args.mqtt_cert,
            key_file=args.mqtt_key,
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
            leader_lease_s=args.leader_lease,
            leader_renew_s=args.leader_renew,
            raw_retention_days=args.raw_retention_days,
            hourly_retention_days=args.hourly_retention_days,
            homeassistant_discovery=args.homeassistant,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            broker_password_file=args.broker_password_file,
            broker_pid_file=args.broker_pid_file,
            broker_reload_command=args.broker_reload_command,
            **({"alerts": load_rules(args.alerts)} if args.alerts else {}),
            **(
                {"metrics": MetricsSettings(per_device=True, per_device_max=args.metrics_per_device)}
                if args.metrics_per_device is not None
                else {}
            ),
            **{
                field: value
                for field, value in (
                    ("dead_letter_days", args.dead_letter_days),
                    ("dead_letter_cap", args.dead_letter_cap),
                )
                if value is not None
            },
        )
    except ValidationError as exc:
        raise FleetError(describe_first_error(exc, default="config")) from exc
    return serve(config)
