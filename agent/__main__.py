"""``python -m agent run|check-config --config FILE``: the agent's commands without the rest of
``edgefleet`` (whose other parts a device does not install)."""

from __future__ import annotations

import argparse
import sys

from agent.cli import register
from protocol.runner import run_command


def main(argv: list[str] | None = None) -> int:
    # Same words as `edgefleet agent ...`, which is what this runs.
    parser = argparse.ArgumentParser(prog="edgefleet")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    register(parser.add_subparsers(dest="command", required=True))
    return run_command(parser, ["agent", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
