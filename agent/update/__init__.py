"""The update state machine: download, verify, stage, smoke-test, activate, commit or roll back.

``machine`` holds the states, events, the transition table and the resume table (data only);
``record`` persists the machine's record before every step; ``steps`` does the work of each
step; ``updater`` runs it all, one update at a time.
"""

from agent.update.machine import RESUME, TRANSITIONS, Event, State
from agent.update.updater import Updater

__all__ = ["RESUME", "TRANSITIONS", "Event", "State", "Updater"]
