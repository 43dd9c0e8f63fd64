"""The broker's answers to the fleet's own publishes (MQTT v5 reason codes in PUBACK): which topics
it refused, e.g. 135 "Not authorized" from an ACL, so they are logged once and sent again later.

Plain dict and set operations, no lock: paho calls ``on_publish`` holding its own lock, and taking
another one there could deadlock with a thread inside ``publish()``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

MAX_UNANSWERED = 10_000
"""Answers remembered at most; the rest are forgotten rather than grown (lost with a connection)."""


class PublishAnswers:
    def __init__(self, user: str | None) -> None:
        self._user = user or "(anonymous)"
        self._sent: dict[int, str] = {}
        self._early: dict[int, Any] = {}
        self._refused: set[str] = set()

    def sent(self, mid: int, topic: str) -> None:
        """A publish was queued as ``mid``; its answer may already have come (then judged now)."""
        if len(self._sent) > MAX_UNANSWERED:
            self._sent.clear()
        self._sent[mid] = topic
        early = self._early.pop(mid, None)
        if early is not None:
            self._sent.pop(mid, None)
            self._judge(topic, early)

    def answered(self, mid: int, reason: Any) -> None:
        """The broker's PUBACK (paho's ``on_publish``) for ``mid``."""
        topic = self._sent.pop(mid, None)
        if topic is None:
            if len(self._early) < MAX_UNANSWERED:
                self._early[mid] = reason
            return
        self._judge(topic, reason)

    def refused(self, topic: str) -> bool:
        """True while the broker's last answer to a publish on ``topic`` was a refusal."""
        return topic in self._refused

    def _judge(self, topic: str, reason: Any) -> None:
        if getattr(reason, "is_failure", False):
            if topic not in self._refused:
                log.warning(
                    "the broker refused the publish to %s (%s): check the ACL of the fleet's user %s; "
                    "it is sent again at the next summary cycle",
                    topic,
                    reason,
                    self._user,
                )
            self._refused.add(topic)
        else:
            self._refused.discard(topic)
