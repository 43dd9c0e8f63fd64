"""Where the ingest writer thread's time goes, summed since the ingester started: what a benchmark
prints beside the throughput, so a slow stage is named rather than guessed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WriterTimes:
    """Seconds of wall time per stage of the writer thread, and its CPU time."""

    batches: int = 0
    messages: int = 0
    decode_s: float = 0.0
    """Parsing and validating payloads (pydantic), building and checking the rows."""
    decode_cpu_s: float = 0.0
    store_s: float = 0.0
    """The transaction: revoked-device check, inserts and updates, commit."""
    store_cpu_s: float = 0.0
    """The part of ``store_s`` this thread computed (the rest: the database, or waiting for the
    interpreter lock while the MQTT thread held it)."""
    ack_s: float = 0.0
    """Handing the QoS 1 acknowledgements to the MQTT client (after the commit)."""
    idle_s: float = 0.0
    """Waiting for messages: the MQTT thread (or the broker) was the slower side."""
    cpu_s: float = 0.0
    """CPU time of the writer thread (the rest of the process's CPU is mostly the MQTT thread)."""

    def copy(self) -> WriterTimes:
        return WriterTimes(**vars(self))
