"""Whether serving works: the outcomes of the latest predictions, for ``/v1/health``.

A request the runtime failed (an inference error, an unexpected exception) makes the agent
``degraded`` until ``window_s`` passes without another one; requests refused for bad input are
the caller's fault and do not count. Time is monotonic, injected for tests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

FAILURE_WINDOW_S = 60.0


class ServingHealth:
    def __init__(
        self, window_s: float = FAILURE_WINDOW_S, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._monotonic = monotonic
        self._failures: deque[float] = deque(maxlen=1000)
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def failed(self, message: str) -> None:
        with self._lock:
            self._failures.append(self._monotonic())
            self.last_error = message

    def recent_failures(self) -> int:
        """Failed requests in the last ``window_s`` seconds."""
        horizon = self._monotonic() - self.window_s
        with self._lock:
            while self._failures and self._failures[0] < horizon:
                self._failures.popleft()
            return len(self._failures)
