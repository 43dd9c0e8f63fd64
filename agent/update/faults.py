"""Fault injection for the update machine: where it raises or hangs on purpose (tests only).

The driver applies a ``Faults`` right after it saved a state, before the state's handler acts,
so every state can be broken the same way: ``raise_in`` makes the state fail as if its step had
raised; ``hang_in`` makes it wait until the agent stops (a kill test kills the process there).
The agent reads ``EDGEFLEET_FAULT_HANG_IN=<state>`` at start; nothing else sets a fault.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from agent.errors import ConfigError, UpdateError
from protocol.update_state import UpdateState

log = logging.getLogger(__name__)

HANG_ENV = "EDGEFLEET_FAULT_HANG_IN"


class InjectedFaultError(UpdateError):
    """The failure ``Faults.raise_in`` makes a state's step raise."""


@dataclass(frozen=True)
class Faults:
    raise_in: UpdateState | None = None
    """This state's step fails (FAIL event) without acting."""
    hang_in: UpdateState | None = None
    """The machine waits in this state, after saving it, until the agent stops (or is killed)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Faults:
        name = environ.get(HANG_ENV)
        if not name:
            return NO_FAULTS
        try:
            state = UpdateState(name)
        except ValueError:
            names = ", ".join(s.value for s in UpdateState)
            raise ConfigError(f"{HANG_ENV}={name!r} names no update state; use one of {names}") from None
        log.warning("%s=%s: the update machine will hang in that state (fault injection)", HANG_ENV, name)
        return cls(hang_in=state)


NO_FAULTS = Faults()
