"""The on-disk outbox: MQTT messages wait here until the broker acknowledged them.

One SQLite file in the state directory (``outbox.sqlite``). ``put`` commits a message before it
returns (``synchronous=FULL``), so a message that was accepted survives a crash, a restart or a
power cut; a message leaves only through ``ack``, which the MQTT link calls from paho's
``on_publish`` (the PUBACK of a QoS 1 publish). Bounded: when ``limit`` messages wait, the oldest
is dropped and counted; the count is persisted and reported in the next telemetry window.

Delivery is at least once: a message whose PUBACK was lost with the process is sent again after
a restart (telemetry carries ``seq``, events an ``update_id``, so the fleet can de-duplicate).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.durable_sqlite import open_store

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """Thread-safe; every method is one short SQLite transaction under one lock."""

    def __init__(self, path: Path, limit: int = 10_000) -> None:
        self.path = path
        self.limit = limit
        self._lock = threading.Lock()
        self._db = open_store(path, _SCHEMA, "messages", "telemetry outbox")

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store a message (committed on return); drop the oldest beyond ``limit``. Returns its id."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT INTO messages (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                (topic, payload, qos, int(retain)),
            )
            (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
            excess = count - self.limit
            if excess > 0:
                self._db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)",
                    (excess,),
                )
                self._add_dropped(excess)
            return int(cursor.lastrowid or 0)

    def _add_dropped(self, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (n,),
        )

    def after(self, last_id: int, limit: int) -> list[OutboxMessage]:
        """Up to ``limit`` messages with an id above ``last_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit),
            ).fetchall()
        return [OutboxMessage(int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), bool(r[4])) for r in rows]

    def ack(self, message_id: int) -> None:
        """The broker has the message: forget it."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(count)

    def take_dropped(self) -> int:
        """Messages dropped (full outbox) since the last call; the count survives restarts."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
            self._db.execute("DELETE FROM counters WHERE name = 'dropped'")
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
