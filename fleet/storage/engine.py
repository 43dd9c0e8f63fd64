"""Engine creation: URL-driven; SQLite gets WAL and a busy timeout; the schema is migrated with Alembic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from fleet.errors import StorageError

SQLITE_BUSY_TIMEOUT_MS = 10_000


def create_engine_for_url(url: str, create_schema: bool = True) -> Engine:
    """An engine for ``url`` migrated to the newest schema; StorageError naming the URL on failure."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"{url!r} is not a database URL (e.g. sqlite:///fleet.db)") from exc
    kwargs: dict[str, Any] = {"json_serializer": serialize_json}
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        database = parsed.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs |= {"pool_size": 10, "max_overflow": 20, "pool_pre_ping": True}
    try:
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise StorageError(
            f"cannot use database {parsed.render_as_string(hide_password=True)}: {exc}"
        ) from exc
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)

    if create_schema:
        try:
            from fleet.storage.migrate import upgrade

            upgrade(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            where = parsed.render_as_string(hide_password=True)
            cause = getattr(exc, "orig", None) or exc
            raise StorageError(f"cannot open database {where}: {cause}") from exc
    return engine


class RawJson(str):
    """JSON text already validated: a JSON column stores it as is instead of serializing again."""

    __slots__ = ()


def serialize_json(value: Any) -> str:
    return value if isinstance(value, RawJson) else json.dumps(value)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
