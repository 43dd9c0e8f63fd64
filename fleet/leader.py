"""One leader among the fleet workers: the worker holding the ``maintenance`` lease runs the
rollout controller, the alert loop, the summary and retention; the others serve HTTP and ingest.

Why a lease row and not a PostgreSQL advisory lock: a session advisory lock lives on one database
connection, so a transaction-pooling proxy (pgbouncer-style) hands it to whichever client gets that
connection next, and a lock is invisible to the API; the lease row is plain UPDATE/INSERT in short
transactions, is shown by ``GET /api/v1/cluster``, and is the same code on SQLite. What a lock does
better (freed the moment its connection dies) the lease makes up for by expiring: a follower takes
over at most one lease duration and one renew interval after the leader's last renewal.

The leader steps back one renew interval before its lease runs out (``leading``), so a leader that
cannot renew (database unreachable, process stalled) stops acting before anyone else may start.
Workers' clocks must agree to well within that margin (NTP): the lease compares wall-clock times
written by different hosts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from fleet.errors import FleetError
from fleet.storage import leases
from fleet.storage.leases import Fence, Lease

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAINTENANCE = "maintenance"
"""The lease whose holder runs rollouts, alerts, the summary and retention."""


def wall_clock() -> datetime:
    return datetime.now(UTC)


def worker_id() -> str:
    """Host, process and a random suffix: unique even when a restarted worker reuses its pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"[:128]


class ClusterView(BaseModel):
    """Who leads the fleet workers (``GET /api/v1/cluster``)."""

    model_config = ConfigDict(extra="forbid")

    lease: str = Field(description="the elected job's lease name")
    leader: str | None = Field(description="the worker holding the lease now; null while nobody does")
    term: int | None = Field(description="grows by one each time the lease changes hands")
    leader_since: datetime | None = Field(description="when the current holder took the lease")
    expires_at: datetime | None = Field(description="when the lease runs out unless renewed")
    this_worker: str | None = Field(description="the worker answering this request (null: not elected)")
    this_worker_leads: bool = Field(description="whether the worker answering runs the elected job")


class LeaderElector:
    """Campaigns for one lease; ``leading`` says whether this worker may run the elected job now."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_s: float,
        renew_s: float,
        name: str = MAINTENANCE,
        holder: str | None = None,
        clock: Clock = wall_clock,
    ) -> None:
        if not 0 < 2 * renew_s < lease_s:
            raise FleetError(
                f"the lease ({lease_s} s) must be more than twice the renew interval ({renew_s} s): "
                "the leader steps back one interval before its lease runs out"
            )
        self.engine = engine
        self.name = name
        self.holder = holder or worker_id()
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.clock = clock
        self._held: Lease | None = None
        """The lease as this worker last took or renewed it; None while it follows."""
        self._seen_leader: str | None = None

    @property
    def leading(self) -> bool:
        held = self._held
        margin = timedelta(seconds=self.renew_s)
        return held is not None and self.clock() < held.expires_at - margin

    def fence(self) -> Fence | None:
        """The token the elected job writes under (None: this worker does not lead now). Take it
        once per round of work: a write under it fails if the lease changed hands since."""
        held = self._held
        if held is None or not self.leading:
            return None
        return Fence(held.name, self.holder, held.term)

    def campaign(self) -> bool:
        """One attempt to take or renew the lease; whether this worker leads afterwards. A database
        error is logged and changes nothing: a leader keeps leading until its margin runs out."""
        was_leading = self.leading
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                lease = leases.acquire(conn, self.name, self.holder, now, self.lease_s)
        except SQLAlchemyError as exc:
            log.warning("leader election: cannot reach the database to renew the lease (%s)", exc)
            if was_leading and not self.leading:
                log.warning("leader election: %s steps back (its lease could not be renewed)", self.holder)
            return self.leading
        self._held = lease if lease.held_by(self.holder, now) else None
        self._log_transition(was_leading, lease)
        return self.leading

    def _log_transition(self, was_leading: bool, lease: Lease) -> None:
        if self.leading and not was_leading:
            log.info("leader election: %s now leads %r (term %d)", self.holder, self.name, lease.term)
        elif was_leading and not self.leading:
            log.warning("leader election: %s lost %r to %s", self.holder, self.name, lease.holder)
        elif not self.leading and lease.holder != self._seen_leader:
            log.info("leader election: %s follows %s (term %d)", self.holder, lease.holder, lease.term)
        self._seen_leader = lease.holder

    def release(self) -> None:
        """Give the lease up (clean shutdown), so a follower takes over at its next attempt."""
        if self._held is None:
            return
        self._held = None
        try:
            with self.engine.begin() as conn:
                if leases.release(conn, self.name, self.holder, self.clock()):
                    log.info("leader election: %s released %r", self.holder, self.name)
        except SQLAlchemyError as exc:
            log.warning("leader election: could not release the lease (%s); it expires by itself", exc)

    def run(self, stop: threading.Event) -> None:
        """Campaign every ``renew_s`` until ``stop`` is set, then release the lease."""
        while True:
            self.campaign()
            if stop.wait(self.renew_s):
                break
        self.release()


def cluster_view(engine: Engine, elector: LeaderElector | None, now: datetime) -> ClusterView:
    """The lease as stored, and this worker's part in it (``elector`` None: a process that does not
    campaign, e.g. an in-process test app)."""
    name = elector.name if elector is not None else MAINTENANCE
    with engine.begin() as conn:
        lease = leases.get_lease(conn, name)
    live = lease is not None and now < lease.expires_at
    return ClusterView(
        lease=name,
        leader=lease.holder if live and lease is not None else None,
        term=lease.term if lease is not None else None,
        leader_since=lease.acquired_at if live and lease is not None else None,
        expires_at=lease.expires_at if lease is not None else None,
        this_worker=elector.holder if elector is not None else None,
        this_worker_leads=elector is not None and elector.leading,
    )
