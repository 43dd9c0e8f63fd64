"""Wire types shared by the converter, the agent and the fleet.

Everything here is a pydantic model or a pure function: no network, no environment reads,
nothing at import time. The bundle codec (``protocol.bundle``) reads and writes only the
archive paths and file objects its caller hands it.
"""

from protocol.errors import EdgefleetError, ProtocolError
from protocol.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "EdgefleetError", "ProtocolError"]
