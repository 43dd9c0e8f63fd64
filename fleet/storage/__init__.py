"""The fleet's storage: SQLAlchemy Core tables and the repository functions that use them."""

# These put their tables on ``metadata`` before anyone uses it.
import fleet.storage.alert_cursor
import fleet.storage.device_tags  # noqa: F401
from fleet.storage.engine import create_engine_for_url
from fleet.storage.schema import metadata

__all__ = ["create_engine_for_url", "metadata"]
