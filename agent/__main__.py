"""``python -m agent run|check-config --config FILE``: the agent's commands without the rest of
``edgefleet`` (whose other parts a device does not install)."""

from __future__ import annotations

import argparse
import logging
import sys

from agent.cli import register
from protocol.errors import EdgefleetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    register(commands)
    args = parser.parse_args(["agent", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.handler(args)
    except EdgefleetError as exc:
        print(f"edgefleet agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
