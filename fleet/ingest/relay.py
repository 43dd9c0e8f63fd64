"""The parent's side of the child writer (``fleet.ingest.child``): pass batches over, take results.

Two threads: the sender takes what the MQTT thread queued and sends it (at most ``IN_FLIGHT``
batches unconfirmed, so batches grow while the child is busy, as they did in the writer thread);
the receiver takes each ``Done`` and hands the batch back to the ingester, which counts and acks.

A batch stays in ``inflight`` until its ``Done`` arrives. When the child dies (killed, out of
memory, a crash in a driver), the receiver sees the pipe end, logs, starts a new child and sends
it every batch still in flight, marked redelivered: what the dead child had committed is then
recognised as duplicates, and nothing was acknowledged before its commit. The broker does not
resend on a live connection, so the parent's copy is what makes a child's death lossless.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy import Engine

from fleet.config import MqttSettings
from fleet.ingest.child import ChildConfig, Done, child_main, to_wire
from fleet.ingest.decode import Received
from fleet.ingest.handover import take_batch
from fleet.ingest.timing import WriterTimes

log = logging.getLogger(__name__)

IN_FLIGHT = 3
"""Batches sent and not yet confirmed: one being stored, one being decoded, one waiting, so the
child never idles."""
RESTART_DELAY_MAX_S = 30.0
READY_WAIT_S = 30.0
STREAK_RESET_S = 60.0


class ProcessWriter:
    """Feeds one child process at a time from ``pending``; ``on_done(batch, done)`` per result."""

    def __init__(
        self,
        config: ChildConfig,
        pending: deque[Received],
        arrived: threading.Event,
        stop: threading.Event,
        on_done: Callable[[list[Received], Done], None],
    ) -> None:
        self._config = config
        self._pending = pending
        self._arrived = arrived
        self._stop = stop
        self._on_done = on_done
        self._lock = threading.Lock()
        """Held to send, and to replace the child (so nothing is sent to a dead one after the swap)."""
        self._slots = threading.Semaphore(IN_FLIGHT)
        self._inflight: dict[int, list[Received]] = {}
        self._next_id = 0
        self._finishing = False
        self._abandon = False
        self._restarts = 0
        self._streak = 0
        self._spawned_at = 0.0
        self._times = WriterTimes(in_child=True)
        """Summed over children that ended; the running child's latest report is added on read."""
        self._current = WriterTimes(in_child=True)
        self._relay_cpu: dict[str, float] = {}
        self._conn, self._process = self._spawn()
        self._threads = [
            threading.Thread(target=self._send_loop, name="fleet-ingest-sender", daemon=True),
            threading.Thread(target=self._receive_loop, name="fleet-ingest-receiver", daemon=True),
        ]

    def start(self) -> None:
        """Start passing batches once the child is ready (its imports take a second or so: the
        MQTT connection waits for it rather than queueing the first second's stream)."""
        if not self._conn.poll(READY_WAIT_S):
            log.warning("ingest writer process %s not ready after %.0fs; going on", self.pid, READY_WAIT_S)
        for thread in self._threads:
            thread.start()

    def stop(self, deadline: float) -> bool:
        """Let the child store what is queued and exit; False when it did not by ``deadline``
        (then it is killed: what it held is unacknowledged and will be redelivered)."""
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        finished = not any(thread.is_alive() for thread in self._threads)
        if not finished:
            with self._lock:
                self._abandon = True
                self._process.kill()
            for thread in self._threads:
                thread.join(timeout=5.0)
        self._process.join(timeout=max(0.1, deadline - time.monotonic()))
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5.0)
        self._conn.close()
        return finished

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def restarts(self) -> int:
        return self._restarts

    def in_flight(self) -> int:
        """Messages sent to the child and not yet reported stored (the queue goes on there).

        Without the lock, which a send to a busy child may hold a while: ``list`` copies the
        values in one step of the interpreter."""
        return sum(len(batch) for batch in list(self._inflight.values()))

    def times(self) -> WriterTimes:
        total = self._times.copy()
        total.add(self._current)
        total.relay_cpu_s = sum(self._relay_cpu.values())
        return total

    # ------------------------------------------------------------ the child

    def _spawn(self) -> tuple[Connection, BaseProcess]:
        # Not a fork of this process: it would copy the parent's threads' locks and open
        # connections. A fork server is a clean process started once, with the child's imports
        # done; each writer forks from it in milliseconds instead of importing for half a second of
        # CPU (a restart after a crash, a server started per test).
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["fleet.ingest.child"])
        mine, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=child_main, args=(theirs, self._config), name="fleet-ingest-writer", daemon=True
        )
        process.start()
        self._spawned_at = time.monotonic()
        theirs.close()  # only the child holds its end: its death ends the pipe for the receiver
        log.info("ingest writer process %s started for %s", process.pid, self._config.safe_url)
        return mine, process

    def _send(self, batch_id: int, batch: list[Received], redelivered: bool = False) -> None:
        wires = [to_wire(item) for item in batch]
        if redelivered:
            wires = [(topic, payload, at, True) for topic, payload, at, _ in wires]
        # When the child is gone, the receiver restarts it and sends everything in flight again.
        with contextlib.suppress(OSError, ValueError):
            self._conn.send_bytes(pickle.dumps((batch_id, wires), 5))

    def _replace_child(self) -> bool:
        """After the child's pipe ended: False when that was the planned end, else a new child that
        is sent every batch in flight (after a growing pause when children keep dying)."""
        with self._lock:
            if self._abandon or (self._finishing and not self._inflight):
                return False
            self._process.join(timeout=5.0)
            code = self._process.exitcode
            log.error(
                "ingest writer process %s ended (exit code %s) with %d batches in flight; starting "
                "another, which stores them again (unacknowledged until then)",
                self._process.pid,
                code,
                len(self._inflight),
            )
            self._restarts += 1
            # Children that keep dying young are restarted ever more slowly; one that lived a while
            # starts the count again.
            lived = time.monotonic() - self._spawned_at
            self._streak = 1 if lived > STREAK_RESET_S else self._streak + 1
            time.sleep(min(0.1 * 2 ** min(self._streak, 10), RESTART_DELAY_MAX_S))
            self._conn.close()
            self._times.add(self._current)
            self._current = WriterTimes(in_child=True)
            self._conn, self._process = self._spawn()
            for batch_id, batch in sorted(self._inflight.items()):
                self._send(batch_id, batch, redelivered=True)
            if self._finishing:
                self._send_finish()
            return True

    def _send_finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._conn.send_bytes(pickle.dumps(None, 5))

    # ------------------------------------------------------------ threads

    def _send_loop(self) -> None:
        cpu_start = time.thread_time()
        while True:
            self._slots.acquire()
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                if self._stop.is_set():
                    break
                continue
            with self._lock:
                batch_id, self._next_id = self._next_id, self._next_id + 1
                self._inflight[batch_id] = batch
                self._send(batch_id, batch)
            self._relay_cpu["sender"] = time.thread_time() - cpu_start
        with self._lock:
            self._finishing = True
            self._send_finish()

    def _take_batch(self) -> list[Received]:
        return take_batch(self._pending, self._arrived, self._config.batch_size)

    def _receive_loop(self) -> None:
        cpu_start = time.thread_time()
        while True:
            try:
                done: Done | str = pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                if self._replace_child():
                    continue
                return
            if not isinstance(done, Done):  # READY, from a child started here or by a restart
                continue
            with self._lock:
                batches = [self._inflight.pop(batch_id) for batch_id in done.batch_ids]
            self._current = WriterTimes(**done.times)
            batch = [item for part in batches for item in part]
            try:
                self._on_done(batch, done)
            except Exception:  # the receiver never dies; unacked messages come back on reconnect
                log.exception("handling a stored batch of %d messages failed", len(batch))
            for _ in batches:
                self._slots.release()
            self._relay_cpu["receiver"] = time.thread_time() - cpu_start


def child_config(engine: Engine, settings: MqttSettings, dead_letter_cap: int) -> ChildConfig | str:
    """What a child writer needs, or why the writer stays a thread (a database only this process
    can open, one core, or the setting)."""
    if settings.writer == "thread":
        return "the writer setting asks for a thread"
    url = engine.url
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        return f"{backend} is stored in this process"
    if backend == "sqlite" and _in_memory(url.database, url.query):
        return "an in-memory SQLite database exists only in this process"
    if settings.writer == "auto" and _cores() < 2:
        return "one CPU core: a second process would only take turns with this one"
    return ChildConfig(
        db_url=url.render_as_string(hide_password=False),
        safe_url=url.render_as_string(hide_password=True),
        topic_prefix=settings.topic_prefix,
        max_payload_bytes=settings.max_payload_bytes,
        batch_size=settings.batch_size,
        dead_letter_cap=dead_letter_cap,
        log_level=logging.getLogger().getEffectiveLevel(),
    )


def _in_memory(database: str | None, query: Mapping[str, Any]) -> bool:
    return not database or database == ":memory:" or "memory" in str(query.get("mode", ""))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
