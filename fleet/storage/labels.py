"""The groups and tags in use, for the dashboard's device filter (the list itself filters in SQL)."""

from __future__ import annotations

from sqlalchemy import Connection, func, select, true

from fleet.storage.schema import device_meta


def labels_in_use(conn: Connection) -> tuple[list[str], list[str]]:
    """(groups, tags), each distinct and sorted: two small queries, however many devices."""
    groups = conn.execute(
        select(device_meta.c.group_name).where(device_meta.c.group_name.is_not(None)).distinct()
    ).scalars()
    if conn.dialect.name == "postgresql":
        expanded = func.json_array_elements_text(device_meta.c.tags).table_valued("value")
    else:
        expanded = func.json_each(device_meta.c.tags).table_valued("value")
    # A function in FROM sees the row before it (PostgreSQL: implicitly LATERAL; SQLite: always).
    each_tag = select(expanded.c.value).select_from(device_meta).join(expanded, true())
    tags = conn.execute(each_tag.distinct()).scalars()
    return sorted(groups), sorted(str(tag) for tag in tags)
