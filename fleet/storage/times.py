"""UTC in, timezone-aware UTC out: SQLite drops the offset of a stored timestamp."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(value: datetime) -> datetime:
    """Timestamps go in as UTC and come out timezone-aware (SQLite drops the offset)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)
