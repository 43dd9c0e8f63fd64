"""The update state machine: download, verify, stage, smoke-test, activate, commit or roll back.

``machine`` holds the states, events, the transition and resume tables and the driver that walks
them; ``handlers`` what each state does; ``policy`` the numbers they run by; ``runner`` where the
heavy steps run (a worker process); ``steps`` the steps themselves; ``record`` the record saved
before every state; ``updater`` runs it all, one update at a time.
"""

from agent.update.machine import RESUME, TRANSITIONS, Event, State
from agent.update.policy import UpdatePolicy
from agent.update.updater import Updater, build_updater

__all__ = ["RESUME", "TRANSITIONS", "Event", "State", "UpdatePolicy", "Updater", "build_updater"]
