"""The SQLite file behind the agent's stores (the MQTT outbox, the capture store): WAL, and every
commit on disk before it returns; a damaged file is set aside rather than stopping the agent."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from agent.errors import StoreError

log = logging.getLogger(__name__)


def _connect(path: Path, schema: str, probe_table: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
        db.execute(f"SELECT COUNT(*) FROM {probe_table}").fetchone()  # reads a page: finds damage now
    except sqlite3.Error:
        db.close()
        raise
    return db


def open_store(path: Path, schema: str, probe_table: str, what: str) -> sqlite3.Connection:
    """Open (or create) the store; a damaged one must not keep the agent from serving, so it is
    moved to ``<name>.damaged-<time>`` and a new one started. ``what`` names it in the messages."""
    try:
        return _connect(path, schema, probe_table)
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        log.error(
            "the %s %s is unreadable (%s); moved it to %s and started a new one", what, path, exc, aside
        )
        try:
            path.replace(aside)
            for suffix in ("-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            return _connect(path, schema, probe_table)
        except (OSError, sqlite3.Error) as again:
            raise StoreError(f"cannot open the {what} {path}: {again}") from again
