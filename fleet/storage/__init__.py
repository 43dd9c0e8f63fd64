"""The fleet's storage: SQLAlchemy Core tables and the repository functions that use them."""

from fleet.storage.engine import create_engine_for_url
from fleet.storage.schema import metadata

__all__ = ["create_engine_for_url", "metadata"]
