"""Where the ingest writer's time goes, summed since the ingester started: what a benchmark prints
beside the throughput, so a slow stage is named rather than guessed."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class WriterTimes:
    """Seconds of wall time per stage of the writer (thread or child process), and its CPU time.

    A child writer decodes on one thread and stores on another, so its ``decode_s`` and ``store_s``
    overlap (their sum exceeds its lifetime when the database's work hides behind decoding)."""

    batches: int = 0
    messages: int = 0
    decode_s: float = 0.0
    """Parsing and validating payloads (pydantic), building and checking the rows."""
    decode_cpu_s: float = 0.0
    store_s: float = 0.0
    """The transaction: revoked-device check, inserts and updates, commit."""
    store_cpu_s: float = 0.0
    """The part of ``store_s`` the writer computed (the rest: the database, or in the writer thread,
    waiting for the interpreter lock while the MQTT thread held it)."""
    ack_s: float = 0.0
    """Handing the QoS 1 acknowledgements to the MQTT client (after the commit)."""
    idle_s: float = 0.0
    """Waiting for messages: the MQTT thread (or the broker) was the slower side."""
    cpu_s: float = 0.0
    """CPU time of the writer (the rest of the MQTT process's CPU is mostly its network thread;
    a child writer's is not in that process's CPU time at all)."""
    in_child: bool = False
    """The writer is a child process (``fleet.ingest.child``), not a thread of the MQTT process."""
    relay_cpu_s: float = 0.0
    """With a child writer: CPU time of the MQTT process's threads that send it batches and take its
    results (the acks included)."""

    def copy(self) -> WriterTimes:
        return WriterTimes(**vars(self))

    def add(self, other: WriterTimes) -> None:
        """Add ``other``'s counts and seconds to these (a child's, when it ended or was replaced)."""
        for field in fields(self):
            value = getattr(other, field.name)
            if not isinstance(value, bool):
                setattr(self, field.name, getattr(self, field.name) + value)
