"""Leases: a named row that one holder at a time owns until ``expires_at`` (leader election).

A lease is taken or renewed with one conditional UPDATE (``holder`` is me, or the lease expired),
then, when no row exists yet, one INSERT that does nothing on conflict: plain statements in one
short transaction, so the election also works through a transaction-pooling proxy (where a session
advisory lock would be released, or held by the wrong client, as the pooler swaps connections).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, case, select, update

from fleet.errors import StaleLeaderError
from fleet.storage.schema import leases
from fleet.storage.times import utc


@dataclass(frozen=True)
class Lease:
    """A lease as stored: who holds it, since when, until when, and how many holders it had."""

    name: str
    holder: str
    term: int
    acquired_at: datetime
    expires_at: datetime

    def held_by(self, holder: str, now: datetime) -> bool:
        return self.holder == holder and now < self.expires_at


@dataclass(frozen=True)
class Fence:
    """A leader's fencing token: the lease as its holder held it when it decided to act. Writes
    made under it are refused once the lease changed hands (a new term), whatever the clocks say."""

    name: str
    holder: str
    term: int


def _lease(conn: Connection, name: str) -> Lease | None:
    row = conn.execute(select(leases).where(leases.c.name == name)).first()
    if row is None:
        return None
    return Lease(
        name=row.name,
        holder=row.holder,
        term=int(row.term),
        acquired_at=utc(row.acquired_at),
        expires_at=utc(row.expires_at),
    )


def get_lease(conn: Connection, name: str) -> Lease | None:
    return _lease(conn, name)


def acquire(conn: Connection, name: str, holder: str, now: datetime, duration_s: float) -> Lease:
    """Take or renew the lease for ``holder`` if it is free, expired or already its own; returns
    the lease as it stands afterwards (held by someone else when taking it failed).

    ``term`` grows by one each time the lease changes hands: a holder that sees a term other than
    the one it took has lost the lease in between.
    """
    now = utc(now)
    until = now + timedelta(seconds=duration_s)
    mine = leases.c.holder == holder
    taken = conn.execute(
        update(leases)
        .where(leases.c.name == name, mine | (leases.c.expires_at <= now))
        .values(
            holder=holder,
            expires_at=until,
            term=case((mine, leases.c.term), else_=leases.c.term + 1),
            acquired_at=case((mine, leases.c.acquired_at), else_=now),
        )
    ).rowcount
    if not taken:
        _insert_if_absent(conn, name, holder, now, until)
    lease = _lease(conn, name)
    assert lease is not None  # updated, inserted, or inserted by a contender in between
    return lease


def _insert_if_absent(conn: Connection, name: str, holder: str, now: datetime, until: datetime) -> None:
    row = {"name": name, "holder": holder, "term": 1, "acquired_at": now, "expires_at": until}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(leases).values(**row).on_conflict_do_nothing(index_elements=["name"]))
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(leases).values(**row).on_conflict_do_nothing(index_elements=["name"]))


def release(conn: Connection, name: str, holder: str, now: datetime) -> bool:
    """Let the lease go at once (a clean shutdown): a follower takes over at its next attempt
    instead of after the lease runs out. False when ``holder`` did not hold it."""
    released = conn.execute(
        update(leases).where(leases.c.name == name, leases.c.holder == holder).values(expires_at=utc(now))
    ).rowcount
    return bool(released)


def check_fence(conn: Connection, fence: Fence) -> None:
    """Make ``conn``'s transaction a leader's: the lease must still be ``fence.holder``'s in
    ``fence.term``, else StaleLeaderError (the caller's transaction rolls back, nothing written).

    Run it first in the transaction. It is an UPDATE that changes nothing, so it takes the lease
    row's lock (PostgreSQL) or the database's write lock (SQLite) until the transaction ends: a
    takeover waits for the write to commit and the next fenced write sees the new term. A leader
    paused past its lease (GC, SIGSTOP) cannot write after someone else took over, which the
    clock-based ``leading`` alone cannot promise.
    """
    kept = conn.execute(
        update(leases)
        .where(leases.c.name == fence.name, leases.c.holder == fence.holder, leases.c.term == fence.term)
        .values(term=leases.c.term)
    ).rowcount
    if not kept:
        now = _lease(conn, fence.name)
        who = f"{now.holder} in term {now.term}" if now is not None else "nobody"
        raise StaleLeaderError(
            f"{fence.holder} no longer holds the {fence.name!r} lease of term {fence.term} "
            f"(held by {who}): its write was refused"
        )
