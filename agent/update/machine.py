"""States, events and the two tables that route them. Data only: the updater interprets it.

A state only acts and returns an event; all routing is ``TRANSITIONS[(state, event)]``. The
state is saved before it acts, and at start-up ``RESUME`` maps the saved state to the state to
continue in; anything not listed (an unknown or corrupt record) rolls back.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
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
    # Before activation nothing that serves has changed: redo the interrupted step.
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
