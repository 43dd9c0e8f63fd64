"""Run a parsed command the one way every edgefleet entry point does: logging to stderr, a user
error as one line and exit status 2, Ctrl-C as 130. Shared by ``edgefleet`` and the per-part
``python -m agent`` / ``python -m fleet`` entry points."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from protocol.errors import EdgefleetError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` (needs ``-v/--verbose`` and a subcommand setting ``handler``) and run it."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.handler(args)
    except EdgefleetError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return result
