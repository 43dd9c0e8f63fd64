"""The states an agent's update walks through, as they travel in events and status messages.

The agent's transition table (``agent.update.machine``) routes between them; the fleet reads
them from ``UpdateEvent.state`` and ``DeviceStatus.update_state``. The strings are the wire's.
"""

from __future__ import annotations

from enum import StrEnum


class UpdateState(StrEnum):
    IDLE = "idle"
    DOWNLOAD = "download"
    VERIFY = "verify"
    STAGE = "stage"
    SMOKE = "smoke"
    ACTIVATE = "activate"
    PROBATION = "probation"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    FAILED = "failed"


FAILED_INSTALL_STATES = frozenset({UpdateState.ROLLBACK, UpdateState.FAILED})
"""An update event in one of these says the install did not take."""
