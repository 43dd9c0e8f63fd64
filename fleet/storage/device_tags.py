"""Each device's tags one row per tag, beside ``device_meta.tags`` (which stays what responses show):
the device list's tag filter is then an index range instead of a JSON scan of every device. Written
only through ``set_device_tags`` and ``forget_device_tags``, in the transaction that writes the tags."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Column, Connection, Index, PrimaryKeyConstraint, String, Table, delete, insert

from fleet.storage.schema import metadata

device_tags = Table(
    "device_tags",
    metadata,
    Column("device_id", String(64), nullable=False),
    Column("tag", String(64), nullable=False),
    PrimaryKeyConstraint("device_id", "tag", name="pk_device_tags"),
    # The filter's way in: every device with a tag, in device-id order.
    Index("ix_device_tags_tag", "tag", "device_id"),
)


def set_device_tags(conn: Connection, device_id: str, tags: Iterable[str]) -> None:
    """Replace a device's tag rows with ``tags``."""
    forget_device_tags(conn, device_id)
    rows = [{"device_id": device_id, "tag": tag} for tag in sorted(set(tags))]
    if rows:
        conn.execute(insert(device_tags), rows)


def forget_device_tags(conn: Connection, device_id: str) -> None:
    conn.execute(delete(device_tags).where(device_tags.c.device_id == device_id))
