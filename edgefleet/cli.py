"""``edgefleet``: one command, a subcommand per job.

Each part registers its own subcommands (``<part>/cli.py``); handlers import their heavy
modules only when they run, so ``edgefleet agent run`` never loads TensorFlow and
``edgefleet convert`` never loads the fleet's web stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgefleet import __version__
from protocol.runner import run_command

DESCRIPTION = """\
Put quantized TFLite models on fleets of edge devices and keep them healthy there.

  operator:  edgefleet keys generate   -> a signing key pair
             edgefleet convert ...     -> a signed, validated model bundle
             edgefleet model push/deploy  -> upload to the fleet, roll out to devices
  server:    edgefleet fleet serve     -> registry, telemetry ingestion, dashboard
  device:    edgefleet agent run       -> inference API, safe updates, telemetry
  try it:    edgefleet demo            -> the whole chain on this machine
"""


def build_parser() -> argparse.ArgumentParser:
    from agent.cli import register as register_agent
    from converter.cli import register as register_converter
    from edgefleet.demo_cli import register as register_demo
    from edgefleet.device_archive import register as register_device_archive
    from fleet.cli import register as register_fleet

    parser = argparse.ArgumentParser(
        prog="edgefleet", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_converter(commands)
    register_fleet(commands)
    register_agent(commands)
    register_demo(commands)
    register_device_archive(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
