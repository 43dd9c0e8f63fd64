"""The hand-over from paho's network thread to whoever stores: a deque, and an event set only while
the taker may be waiting (so the network thread pays for a set only when it wakes someone)."""

from __future__ import annotations

import threading
from collections import deque

from fleet.ingest.decode import Received

WAIT_S = 0.2
"""How long a taker sleeps on an empty queue before it looks again (and at its stop flag)."""


def take_batch(pending: deque[Received], arrived: threading.Event, batch_size: int) -> list[Received]:
    """Up to ``batch_size`` queued messages, oldest first; waits up to WAIT_S when none is queued."""
    if not pending:
        arrived.clear()
        if not pending:  # checked again after the clear: a message queued just before it counts
            arrived.wait(WAIT_S)
    take = min(len(pending), batch_size)
    return [pending.popleft() for _ in range(take)]
