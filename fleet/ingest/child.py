"""The ingest writer as a child process: decodes and stores what the parent's MQTT thread received.

The parent keeps the MQTT connection (and acknowledges); this process does everything that needs
the CPU per message (parsing, validating, building rows, the transaction), on its own interpreter
lock, so on a machine with a second core the two no longer take turns.

The wire between them is one duplex pipe of pickled tuples, in order:

* parent -> child: ``(batch_id, [(topic, payload, received_at_ts, redelivered), ...])``, or ``None``
  to finish (what was sent before it is stored first).
* child -> parent: ``READY`` once, then ``Done(batch_ids, stored, duplicates, letters, times)``
  once the batches' transaction committed; ``letters`` are ``(topic, reason, detail)`` for the
  parent to log and count, ``times`` this process's cumulative ``WriterTimes`` fields.

Nothing here acknowledges: a batch whose ``Done`` never arrives (this process died) is sent again
to the next child, marked redelivered, and what it had already stored is recognised as duplicates.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import queue
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from fleet.ingest.batch_store import BatchStore
from fleet.ingest.decode import DeadLetter, Decoded, Received, decode
from fleet.ingest.timing import WriterTimes
from protocol.topics import Topics

log = logging.getLogger(__name__)

Wire = tuple[str, bytes, float, bool]
"""One message on the pipe: topic, payload, when it arrived (POSIX seconds), redelivered."""


GC_THRESHOLD = 100_000
"""Allocations between two young-generation collections in the child (Python's default: 700)."""
READY = "ready"
"""The child's first message: imports done and engine made, so the parent may start receiving."""


class ChildConfig(NamedTuple):
    """What the child needs to open its own engine and judge messages (picklable, no engine)."""

    db_url: str
    """With its password: never logged (``safe_url`` is what the logs show)."""
    safe_url: str
    topic_prefix: str
    max_payload_bytes: int
    batch_size: int
    dead_letter_cap: int
    log_level: int

    def __repr__(self) -> str:  # the URL's password stays out of logs and tracebacks
        return f"ChildConfig(db_url={self.safe_url!r}, topic_prefix={self.topic_prefix!r})"


class Done(NamedTuple):
    batch_ids: list[int]
    stored: int
    duplicates: int
    letters: list[tuple[str, str, str]]
    times: dict[str, Any]
    """This child's ``WriterTimes`` fields, summed since it started."""


def to_wire(item: Received) -> Wire:
    """A message as the child receives it (a flat tuple pickles at a quarter of a named tuple's cost)."""
    return (item.topic, item.payload, item.received_at.timestamp(), item.retain or item.dup)


def from_wire(wire: Wire) -> Received:
    topic, payload, at, redelivered = wire
    return Received(topic, payload, datetime.fromtimestamp(at, UTC), dup=redelivered)


def child_main(conn: Connection, config: ChildConfig) -> None:
    """The child's whole life: open the engine, then store what arrives until ``None``."""
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fleet.storage import create_engine_for_url  # imported here: the parent pays nothing for it

    engine = create_engine_for_url(config.db_url, create_schema=False)
    # Every message allocates a few hundred short-lived objects (no cycles among them): with the
    # default threshold the collector ran every few messages and walked the imported modules'
    # objects too, a quarter of decoding's CPU. Those are frozen out of its sight; it runs rarely.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    conn.send_bytes(pickle.dumps(READY, 5))
    try:
        _serve(conn, config, BatchStore(engine, config.dead_letter_cap, threading.Event()))
    except (EOFError, BrokenPipeError):
        # The parent died (what this child stored is unacknowledged: redelivered, stored once).
        log.warning("ingest writer process: the fleet process is gone; exiting")
    finally:
        engine.dispose()


def _serve(conn: Connection, config: ChildConfig, store: BatchStore) -> None:
    """Decode here and store on a second thread: the database's own work (SQLite's C code, or the
    PostgreSQL server's, waited for on a socket) runs without the interpreter lock, so the next
    batch is decoded meanwhile. Batches are stored in the order they came, one at a time."""
    topics = Topics(config.topic_prefix)
    times = WriterTimes(in_child=True)
    decoded: queue.Queue[_Decoded | None] = queue.Queue(maxsize=1)
    storer = threading.Thread(
        target=_store_loop,
        args=(conn, store, decoded, times, time.process_time()),
        name="fleet-ingest-store",
        daemon=True,
    )
    storer.start()
    try:
        while True:
            waited = time.perf_counter()
            taken = _take(conn, config.batch_size)
            times.idle_s += time.perf_counter() - waited
            if taken is None:
                return
            ids, wires, finish = taken
            began, began_cpu = time.perf_counter(), time.thread_time()
            batch = [from_wire(wire) for wire in wires]
            items = [decode(item, topics, config.max_payload_bytes) for item in batch]
            times.decode_cpu_s += time.thread_time() - began_cpu
            times.decode_s += time.perf_counter() - began
            decoded.put((ids, batch, items))
            if finish:
                return
    finally:
        decoded.put(None)  # what was decoded is stored first
        storer.join()


_Decoded = tuple[list[int], list[Received], list[Decoded | DeadLetter]]


def _store_loop(
    conn: Connection,
    store: BatchStore,
    decoded: queue.Queue[_Decoded | None],
    times: WriterTimes,
    cpu_start: float,
) -> None:
    try:
        while (job := decoded.get()) is not None:
            ids, batch, items = job
            began, began_cpu = time.perf_counter(), time.thread_time()
            stored, duplicates, letters = store.store(batch, items)
            times.store_cpu_s += time.thread_time() - began_cpu
            times.store_s += time.perf_counter() - began
            times.batches += 1
            times.messages += len(batch)
            times.cpu_s = time.process_time() - cpu_start  # both threads, since serving began
            described = [(letter.topic, letter.reason.value, letter.detail) for letter in letters]
            conn.send_bytes(pickle.dumps(Done(ids, stored, duplicates, described, vars(times).copy()), 5))
    except (EOFError, OSError):
        log.warning("ingest writer process: the fleet process is gone; exiting")
        os._exit(0)
    except BaseException:
        log.exception("ingest writer process: storing failed; exiting (the fleet starts another)")
        os._exit(1)


def _take(conn: Connection, batch_size: int) -> tuple[list[int], list[Wire], bool] | None:
    """The next batches the parent sent, joined up to about ``batch_size`` messages (the parent has
    a few in flight: joined, they are one transaction); ``None`` once told to finish."""
    first = pickle.loads(conn.recv_bytes())
    if first is None:
        return None
    ids, wires = [first[0]], list(first[1])
    while len(wires) < batch_size and conn.poll(0):
        more = pickle.loads(conn.recv_bytes())
        if more is None:
            return ids, wires, True
        ids.append(more[0])
        wires += more[1]
    return ids, wires, False
