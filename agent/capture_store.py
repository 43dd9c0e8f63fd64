"""The capture store: captured samples wait on disk here until the fleet has them.

The outbox pattern of ``agent.outbox``: one SQLite file (``state_dir/capture.sqlite``), every
write committed before it returns (``synchronous=FULL``), so a sample that was stored survives a
crash, a restart or a power cut, and it leaves only through ``ack`` once the fleet answered that
it stored it. Bounded in bytes: past ``max_bytes`` the oldest samples are dropped and counted.
The count is a running total kept with the store's ``stream`` id (a random id made with the
file), so the fleet can add drops up without counting a batch sent twice.
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

from agent.durable_sqlite import open_store

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
ROW_OVERHEAD = 16
"""Bytes a row costs SQLite beyond its payload (rowid, header): counted against ``max_bytes``."""


class CaptureStore:
    """Thread-safe; every method is one short SQLite transaction under one lock."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = open_store(path, _SCHEMA, "samples", "capture store")
        self.stream = self._meta("stream") or self._init_stream()
        (total,) = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0) + COUNT(*) * ? FROM samples", (ROW_OVERHEAD,)
        ).fetchone()
        self._bytes = int(total)

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def _init_stream(self) -> str:
        stream = uuid.uuid4().hex
        with self._lock, self._db:
            self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('stream', ?)", (stream,))
        return self._meta("stream") or stream

    def put_many(self, payloads: list[bytes], dropped: int = 0) -> None:
        """Store samples in one transaction (committed on return), adding ``dropped`` (samples
        lost before they got here) to the count; the oldest go beyond ``max_bytes``."""
        if not payloads and not dropped:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO samples (payload) VALUES (?)", [(p,) for p in payloads])
            added = sum(len(p) + ROW_OVERHEAD for p in payloads)
            evicted = self._evict(self._bytes + added - self.max_bytes)
            self._add_dropped(dropped + evicted[0])
            self._bytes += added - evicted[1]

    def _evict(self, excess: int) -> tuple[int, int]:
        """Delete the oldest rows until ``excess`` bytes are freed: (rows, bytes)."""
        rows = freed = 0
        while excess > freed:
            batch = self._db.execute(
                "SELECT id, LENGTH(payload) FROM samples ORDER BY id LIMIT 256"
            ).fetchall()
            if not batch:
                break
            last = 0
            for row_id, size in batch:
                last = int(row_id)
                rows += 1
                freed += int(size) + ROW_OVERHEAD
                if freed >= excess:
                    break
            self._db.execute("DELETE FROM samples WHERE id <= ?", (last,))
        return rows, freed

    def _add_dropped(self, n: int) -> None:
        if n:
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES ('dropped', ?) "
                "ON CONFLICT(name) DO UPDATE SET "
                "value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)",
                (str(n),),
            )

    def drop(self, ids: list[int]) -> None:
        """Give up on samples the fleet refused for good (counted as dropped)."""
        self._remove(ids, count_dropped=True)

    def oldest(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` samples, oldest first, as (id, payload)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload FROM samples ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def ack(self, ids: list[int]) -> None:
        """The fleet stored these samples: forget them."""
        self._remove(ids, count_dropped=False)

    def _remove(self, ids: list[int], count_dropped: bool) -> None:
        if not ids:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            marks = ",".join("?" * len(ids))
            (freed, removed) = self._db.execute(
                f"SELECT COALESCE(SUM(LENGTH(payload)), 0), COUNT(*) FROM samples WHERE id IN ({marks})",
                ids,
            ).fetchone()
            self._db.execute(f"DELETE FROM samples WHERE id IN ({marks})", ids)
            if count_dropped:
                self._add_dropped(int(removed))
            self._bytes -= int(freed) + int(removed) * ROW_OVERHEAD

    @property
    def dropped(self) -> int:
        """Samples this stream dropped, ever (a running total)."""
        with self._lock:
            return int(self._meta("dropped") or 0)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
