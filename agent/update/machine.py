"""The update state machine: its states and events, the two tables that route them, the driver.

A state only acts and posts an event: its handler returns (``OK``) or raises (``FAIL``). All
routing is ``TRANSITIONS[(state, event)]``; an event the table does not route is a bug and
fails loudly (``UnroutedEventError``), never a silent stop. The driver saves each state before
its handler acts; at start-up ``RESUME`` maps the saved state to the state to continue in, and
anything not listed (an unknown or unreadable record) rolls back. A state saved more than
``max_state_restarts`` times in a row (the process keeps dying in it) fails without acting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from enum import StrEnum

from agent.errors import UnroutedEventError
from agent.update.faults import NO_FAULTS, Faults, InjectedFaultError
from agent.update.record import RecordFile, UpdateRecord
from protocol.errors import EdgefleetError
from protocol.update_state import FAILED_INSTALL_STATES
from protocol.update_state import UpdateState as State

log = logging.getLogger(__name__)

__all__ = [
    "NETWORK_STATES",
    "RESUME",
    "RESUME_DEFAULT",
    "TRANSITIONS",
    "Event",
    "Interrupted",
    "Machine",
    "State",
    "route",
]


class Event(StrEnum):
    START = "start"
    """A new desired model to install."""
    OK = "ok"
    FAIL = "fail"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.START): State.DOWNLOAD,
    (State.DOWNLOAD, Event.OK): State.VERIFY,
    (State.DOWNLOAD, Event.FAIL): State.ROLLBACK,
    (State.VERIFY, Event.OK): State.STAGE,
    (State.VERIFY, Event.FAIL): State.ROLLBACK,
    (State.STAGE, Event.OK): State.SMOKE,
    (State.STAGE, Event.FAIL): State.ROLLBACK,
    # The only way into activate: the serving process never switches to a model that was not
    # verified and smoke-tested in this update.
    (State.SMOKE, Event.OK): State.ACTIVATE,
    (State.SMOKE, Event.FAIL): State.ROLLBACK,
    (State.ACTIVATE, Event.OK): State.PROBATION,
    (State.ACTIVATE, Event.FAIL): State.ROLLBACK,
    # The new model serves while it is watched; bad health, errors or latency roll it back.
    (State.PROBATION, Event.OK): State.COMMIT,
    (State.PROBATION, Event.FAIL): State.ROLLBACK,
    # The new model is serving; failing to prune old files is reported, not rolled back.
    (State.COMMIT, Event.OK): State.IDLE,
    (State.COMMIT, Event.FAIL): State.IDLE,
    (State.ROLLBACK, Event.OK): State.FAILED,
    (State.ROLLBACK, Event.FAIL): State.FAILED,
    (State.FAILED, Event.OK): State.IDLE,
    (State.FAILED, Event.FAIL): State.IDLE,
}

RESUME: dict[State, State] = {
    State.IDLE: State.IDLE,
    # Before activation nothing that serves has changed: redo the interrupted step. (A saved
    # stage or smoke was saved only after the steps before it succeeded.)
    State.DOWNLOAD: State.DOWNLOAD,
    State.VERIFY: State.VERIFY,
    State.STAGE: State.STAGE,
    State.SMOKE: State.SMOKE,
    # Died while switching: the new model may be what killed us. Go back to the old one.
    State.ACTIVATE: State.ROLLBACK,
    # Died while the new model was on probation: watch it again; the loop counter rolls back a
    # model that keeps killing the process.
    State.PROBATION: State.PROBATION,
    # The switch completed: finishing the commit is idempotent.
    State.COMMIT: State.COMMIT,
    State.ROLLBACK: State.ROLLBACK,
    State.FAILED: State.FAILED,
}
"""Saved state -> state to continue in. Missing keys (and unreadable records) mean ROLLBACK."""

RESUME_DEFAULT = State.ROLLBACK

NETWORK_STATES = frozenset({State.DOWNLOAD, State.VERIFY, State.STAGE, State.SMOKE, State.PROBATION})
"""States whose resumption may wait on the network or be slow; resumed off the start-up path
(a saved probation still counts a restart at start-up, so a crash loop is caught early)."""


class Interrupted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The agent is stopping: leave the saved state as it is; the next start resumes it."""


def route(state: State, event: Event) -> State:
    """The next state; an event the table does not route is a bug, not a failure to roll back."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise UnroutedEventError(
            f"the update machine has no transition for event {event.value!r} in state {state.value!r}; "
            "this is a bug in the agent (agent/update/machine.py TRANSITIONS): please report it"
        ) from None


Handler = Callable[[UpdateRecord], None]
"""A state's action: returns (OK) or raises (FAIL); may note what later states need in the record."""

Reporter = Callable[[State, UpdateRecord], None]
"""Told of every state entered, after it was saved (the agent publishes an ``UpdateEvent``)."""


class Machine:
    """Walks the tables over one persisted record. Not thread-safe: the updater runs one at a time."""

    def __init__(
        self,
        records: RecordFile,
        *,
        report: Reporter,
        stopping: threading.Event,
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.records = records
        self.record = records.load()
        self.report = report
        self.stopping = stopping
        self.faults = faults
        self._pre_entered: State | None = None
        """A probation saved (and counted) at start-up: not saved again when it runs."""

    def resume(self, handlers: Mapping[State, Handler], max_restarts: int, *, local_only: bool) -> bool:
        """Continue what the last process left unfinished; return whether anything ran.

        ``local_only`` (the start-up path) leaves states that may wait on the network for the
        first check, but counts a saved probation's restart now, so a model that kills the
        process at once is rolled back before it serves again.
        """
        saved = self.record.state
        if saved is State.IDLE:
            return False
        resume = RESUME.get(saved, RESUME_DEFAULT) if saved is not None else RESUME_DEFAULT
        if local_only and resume in NETWORK_STATES:
            if resume is State.PROBATION:
                self.enter(State.PROBATION)
                self._pre_entered = State.PROBATION
                if self.record.state_saves > max_restarts:
                    self.run(State.PROBATION, handlers, max_restarts)
                    return True
            log.info("an update was interrupted in %s; it continues at the first check", saved)
            return False
        log.warning("an update was interrupted in state %s; resuming in %s", saved or "(unreadable)", resume)
        if resume is State.ROLLBACK and saved not in FAILED_INSTALL_STATES and not self.record.reason:
            self.record.reason = (
                f"the agent stopped or died in state {saved}; rolled back"
                if saved is not None
                else "the update record was unreadable; rolled back"
            )
        self.run(resume, handlers, max_restarts)
        return True

    def start(self, record: UpdateRecord, handlers: Mapping[State, Handler], max_restarts: int) -> None:
        """Begin a new update described by ``record`` (saved before its first state acts)."""
        self.record = record
        self.run(route(State.IDLE, Event.START), handlers, max_restarts)

    def run(self, state: State, handlers: Mapping[State, Handler], max_restarts: int) -> None:
        while state is not State.IDLE:
            if self._pre_entered is state:
                self._pre_entered = None
            else:
                self.enter(state)
            if state is self.faults.hang_in:
                log.warning("fault injection: hanging in state %s until the process stops", state)
                self.stopping.wait()
                raise Interrupted
            if self.record.state_saves > max_restarts:
                reason = (
                    f"gave up after {self.record.state_saves - 1} restarts in state {state} "
                    "(the agent kept dying there)"
                )
                log.error("%s", reason)
                self._fail(state, reason)
                event = Event.FAIL
            else:
                event = self._act(state, handlers)
            state = route(state, event)
        self.enter(State.IDLE)

    def _act(self, state: State, handlers: Mapping[State, Handler]) -> Event:
        handler = handlers.get(state)
        if handler is None:
            raise UnroutedEventError(
                f"the update machine has no handler for state {state.value!r}; this is a bug in the agent"
            )
        try:
            if state is self.faults.raise_in:
                raise InjectedFaultError(f"fault injection: {state} failed on purpose")
            handler(self.record)
        except Interrupted:
            raise
        except EdgefleetError as exc:
            log.error("update %s failed: %s", state, exc)
            self._fail(state, str(exc))
            return Event.FAIL
        except Exception as exc:
            log.exception("update %s failed unexpectedly", state)
            self._fail(state, f"unexpected {type(exc).__name__}: {exc}")
            return Event.FAIL
        return Event.OK

    def _fail(self, state: State, reason: str) -> None:
        """Note why the update fails; a failing rollback or failed keeps the first reason too."""
        if state in FAILED_INSTALL_STATES and self.record.reason:
            self.record.reason = f"{self.record.reason}; then {state} failed: {reason}"
        else:
            self.record.reason = reason

    def enter(self, state: State) -> None:
        """Save the state before acting in it, counting repeated saves, and report it."""
        if self.record.state == state:
            self.record.state_saves += 1
        else:
            self.record.state = state
            self.record.state_saves = 1
        self.records.save(self.record)
        if state is not State.IDLE:
            self.report(state, self.record)

    def save(self) -> None:
        self.records.save(self.record)
