"""The one bounded wait of edgefleet's tooling: the demo, the process helpers, the benchmarks and the
tests (through ``tests/support/wait.py``) all poll through ``wait_until``.

Intervals and deadlines use ``time.monotonic()``: a machine whose wall clock jumps (an edge board
at its first NTP sync) must not make a wait end early or never.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from protocol.errors import EdgefleetError

T = TypeVar("T")


class WaitTimeoutError(EdgefleetError):
    """What was awaited did not happen in time; the message names it and the last value seen."""


def wait_until(
    check: Callable[[], T | None],
    what: str,
    timeout_s: float = 30.0,
    interval_s: float = 0.05,
) -> T:
    """Call ``check`` until it returns something truthy and return that (never ``None``, so a check
    that answers "the thing, or None" yields the thing); ``WaitTimeoutError`` after ``timeout_s``.

    ``what`` completes "timed out waiting for ...", so name the event: "the fleet API to answer".
    ``check`` is called at least once, even with a zero timeout, and may raise to end the wait
    early (a process that died will never answer).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(
                f"timed out after {timeout_s:g}s waiting for {what} (last value: {value!r})"
            )
        time.sleep(min(interval_s, remaining))
