"""Bring a database to the newest schema with Alembic, in-process, at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"
"""The revision whose tables ``metadata.create_all`` used to build before migrations existed."""
MIGRATION_LOCK = 0x6564676566_1EE7
"""PostgreSQL advisory lock key held while migrating (any fixed 64-bit number)."""


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Upgrade to head; a database made by ``create_all`` before migrations is stamped first."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Workers started together migrate one after the other (the later ones find the head);
            # a transaction-level lock, so it also holds through a transaction-pooling proxy.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config = alembic_config(conn)
        if current_revision(conn) is None and inspect(conn).has_table("models"):
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")
