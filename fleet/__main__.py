"""``python -m fleet ...``: the fleet's subcommands without the rest of ``edgefleet``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fleet.cli import register
from protocol.runner import run_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
