"""The groups and tags in use, for the dashboard's device filter (the list itself filters in SQL)."""

from __future__ import annotations

from sqlalchemy import Connection, select

from fleet.storage.device_tags import device_tags
from fleet.storage.schema import device_meta


def labels_in_use(conn: Connection) -> tuple[list[str], list[str]]:
    """(groups, tags), each distinct and sorted: two small queries, however many devices."""
    groups = conn.execute(
        select(device_meta.c.group_name).where(device_meta.c.group_name.is_not(None)).distinct()
    ).scalars()
    # Sorted here, not in SQL: the order is Python's whatever the database's collation.
    tags = conn.execute(select(device_tags.c.tag).distinct()).scalars()
    return sorted(groups), sorted(tags)
