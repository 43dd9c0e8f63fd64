"""Alert webhook delivery: POST JSON with bounded retries and exponential backoff, on one background
thread; every delivery's outcome (delivered or given up) is recorded in ``alert_deliveries``."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from sqlalchemy import Engine

from fleet.storage.alerts import record_delivery

log = logging.getLogger(__name__)
QUEUE_CAP = 1000
"""Deliveries waiting beyond this are given up (and recorded) instead of growing memory."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    backoff_s: float
    backoff_max_s: float
    timeout_s: float

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
        return float(min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s))


@dataclass(frozen=True)
class Outcome:
    attempts: int
    delivered: bool
    status: int | None
    error: str | None


Post = Callable[[str, dict[str, Any], float], int]
"""POST JSON, return the HTTP status; raises ``requests.RequestException`` when there is no answer."""


def post_json(url: str, body: dict[str, Any], timeout_s: float) -> int:
    return requests.post(url, json=body, timeout=timeout_s).status_code


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def deliver(
    url: str, body: dict[str, Any], policy: RetryPolicy, post: Post, sleep: Callable[[float], object]
) -> Outcome:
    """Try up to ``policy.attempts`` times; a 4xx other than 408/429 is final (retrying cannot help)."""
    status: int | None = None
    error: str | None = None
    for attempt in range(1, policy.attempts + 1):
        try:
            status = post(url, body, policy.timeout_s)
            error = None if status < 300 else f"HTTP {status}"
        except requests.RequestException as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        if error is None:
            return Outcome(attempt, True, status, None)
        if status is not None and not _retryable(status):
            return Outcome(attempt, False, status, error)
        if attempt < policy.attempts:
            sleep(policy.delay(attempt))
    return Outcome(policy.attempts, False, status, error)


@dataclass(frozen=True)
class Job:
    alert_id: int
    event: str
    url: str
    body: dict[str, Any]
    policy: RetryPolicy


class WebhookSender:
    """Delivers jobs in order on one daemon thread (``background=False``: in the caller, for tests)."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        *,
        post: Post = post_json,
        sleep: Callable[[float], object] | None = None,
        background: bool = True,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.post = post
        self._stop = threading.Event()
        # The default sleep wakes early on stop(), so a server shutdown never waits out a backoff.
        self.sleep = sleep or self._stop.wait
        self.background = background
        self._queue: queue.Queue[Job] = queue.Queue(QUEUE_CAP)
        self._thread: threading.Thread | None = None

    def submit(self, job: Job) -> None:
        if not self.background:
            self._run(job)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="alert-webhook", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._record(job, Outcome(0, False, None, f"more than {QUEUE_CAP} deliveries waiting"))

    def join(self) -> None:
        """Wait until every submitted delivery finished (tests)."""
        self._queue.join()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                self._run(job)
            except Exception:
                log.exception("alert webhook delivery failed unexpectedly")
            finally:
                self._queue.task_done()

    def _run(self, job: Job) -> None:
        outcome = deliver(job.url, job.body, job.policy, self.post, self.sleep)
        if not outcome.delivered:
            log.warning(
                "alert webhook %s: gave up on alert %d (%s) after %d attempt(s): %s",
                job.url,
                job.alert_id,
                job.event,
                outcome.attempts,
                outcome.error,
            )
        self._record(job, outcome)

    def _record(self, job: Job, outcome: Outcome) -> None:
        with self.engine.begin() as conn:
            record_delivery(
                conn,
                alert_id=job.alert_id,
                event=job.event,
                url=job.url,
                attempts=outcome.attempts,
                delivered=outcome.delivered,
                status=outcome.status,
                error=outcome.error,
                at=self.clock(),
            )
