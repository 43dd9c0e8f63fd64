"""``edgefleet agent run`` and ``edgefleet agent check-config``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/edgefleet/agent.toml")


def register(commands: Any) -> None:
    """Add the ``agent`` command and its subcommands to the ``edgefleet`` parser."""
    parser = commands.add_parser("agent", help="the device agent: inference API, safe updates, telemetry")
    sub = parser.add_subparsers(dest="agent_command", metavar="SUBCOMMAND", required=True)
    run = sub.add_parser("run", help="run the agent until SIGTERM (systemd: Type=notify)")
    run.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"TOML file (default {DEFAULT_CONFIG})"
    )
    run.set_defaults(handler=_run)
    check = sub.add_parser("check-config", help="validate a config file and say what is wrong")
    check.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"TOML file (default {DEFAULT_CONFIG})"
    )
    check.set_defaults(handler=_check_config)


def _run(args: argparse.Namespace) -> int:
    from agent.app import run
    from agent.config import load_config

    path = args.config
    return run(load_config(path), reload=lambda: load_config(path))


def _check_config(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.errors import ConfigError
    from agent.tls import mqtt_context
    from agent.update.fleet_http import desired_context
    from protocol.errors import EdgefleetError
    from protocol.signing import TrustedKeys

    try:
        config = load_config(args.config)
        mqtt_context(config.mqtt.tls)  # the TLS files exist, are readable and match
        desired_context(config.fleet.url, config.fleet.ca_file)
        trusted = TrustedKeys.from_paths(config.trusted_keys)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except EdgefleetError as exc:
        print(f"{args.config}: trusted_keys: {exc}", file=sys.stderr)
        return 2
    if len(trusted) == 0:
        paths = ", ".join(str(p) for p in config.trusted_keys)
        print(
            f"{args.config}: trusted_keys: no *.pub key found in {paths}; every bundle would be refused",
            file=sys.stderr,
        )
        return 2
    print(f"config OK ({args.config}: device {config.device_id}, {len(trusted)} trusted key(s))")
    return 0
