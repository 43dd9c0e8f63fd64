"""Remote logs on the fleet: asking a device for its log, and putting its chunked answer together.

``request_logs`` records the request and publishes a ``logs`` command on the device's cmd topic.
The device answers on ``devices/{id}/logs/{request_id}``; ``LogCollector`` gathers the chunks in
memory (bounded in count and size, dropped after ``ttl_s``), checks that the whole stream
decompresses to at most ``MAX_LOG_BYTES``, and stores it once for the request it answers (an
answer nobody asked for, or from another device, is dropped). ``GET`` serves it from the database,
so any fleet worker can.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import Engine

from fleet.deploy import Publisher
from fleet.errors import FleetError, NotFoundError
from fleet.storage import remote
from protocol.errors import TopicError
from protocol.messages import Command, CommandKind
from protocol.remote import MAX_LOG_BYTES, LogChunk, LogRequest
from protocol.topics import Topics

log = logging.getLogger(__name__)

KEEP_ANSWERS = timedelta(hours=24)
"""How long requests and their answers stay in the database."""


class DeviceUnreachableError(FleetError):
    """The log request could not be handed to the broker (503)."""


def request_logs(
    engine: Engine, publisher: Publisher, topics: Topics, device_id: str, ask: LogRequest
) -> str:
    """Record ``ask`` for ``device_id`` and send it; the request id to poll."""
    with engine.begin() as conn:
        remote.expire_log_requests(conn, datetime.now(UTC) - KEEP_ANSWERS)
        remote.add_log_request(conn, ask.request_id, device_id, ask.model_dump(mode="json"))
    command = Command(
        command=CommandKind.LOGS, command_id=uuid.uuid4().hex, issued_at=datetime.now(UTC), logs=ask
    )
    if not publisher.publish(topics.cmd(device_id), command.model_dump_json().encode(), qos=1):
        with engine.begin() as conn:
            remote.finish_log_request(
                conn, ask.request_id, device_id, body=None, lines=0, truncated=False,
                error="the fleet is not connected to the broker; the request was not sent",
            )  # fmt: skip
        raise DeviceUnreachableError("the fleet is not connected to the broker; try again shortly")
    return ask.request_id


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class _Pending:
    device_id: str
    total: int
    first_seen: float
    pieces: dict[int, bytes] = field(default_factory=dict)


class LogCollector:
    def __init__(
        self,
        engine: Engine,
        topics: Topics,
        *,
        ttl_s: float = 300,
        max_pending: int = 64,
        max_pending_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.engine = engine
        self.topics = topics
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        """What answers in progress may hold in memory together: more is dropped, not queued."""
        self._pending_bytes = 0
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self.stored = 0
        self.dropped = 0

    def on_message(self, topic: str, payload: bytes) -> None:
        """One chunk (paho's network thread): never raises, never touches the database."""
        try:
            device_id, request_id = self.topics.parse_logs_topic(topic)
            chunk = LogChunk.model_validate_json(payload)
        except (TopicError, ValidationError, ValueError) as exc:
            self._drop(f"a log chunk on {topic!r} is not valid: {exc}")
            return
        if chunk.device_id != device_id or chunk.request_id != request_id:
            self._drop(f"a log chunk on {topic!r} names another device or request")
            return
        done = self._add(device_id, request_id, chunk)
        if done is not None:
            threading.Thread(target=self._store, args=(device_id, chunk, done), daemon=True).start()

    def _add(self, device_id: str, request_id: str, chunk: LogChunk) -> bytes | None:
        now = time.monotonic()
        with self._lock:
            for stale in [k for k, p in self._pending.items() if now - p.first_seen > self.ttl_s]:
                self._forget(stale)
                self.dropped += 1
            pending = self._pending.get(request_id)
            if pending is None:
                if len(self._pending) >= self.max_pending:
                    self._drop(f"too many log answers in progress; dropped {request_id}")
                    return None
                pending = self._pending[request_id] = _Pending(device_id, chunk.total, now)
            if pending.total != chunk.total or pending.device_id != device_id:
                self._forget(request_id)
                self._drop(f"log answer {request_id}: chunks disagree on their number")
                return None
            piece = chunk.piece
            if chunk.seq not in pending.pieces:
                if self._pending_bytes + len(piece) > self.max_pending_bytes:
                    self._forget(request_id)
                    self._drop(
                        f"log answers in progress hold {self._pending_bytes} bytes; dropped {request_id}"
                    )
                    return None
                self._pending_bytes += len(piece)
                pending.pieces[chunk.seq] = piece
            if len(pending.pieces) < pending.total:
                return None
            packed = b"".join(pending.pieces[i] for i in range(pending.total))
            self._forget(request_id)
            return packed

    def _forget(self, request_id: str) -> None:
        """Drop an answer in progress (the caller holds the lock)."""
        pending = self._pending.pop(request_id)
        self._pending_bytes -= sum(len(piece) for piece in pending.pieces.values())

    def _store(self, device_id: str, last: LogChunk, packed: bytes) -> None:
        error = last.error
        try:
            inflater = zlib.decompressobj()
            text = inflater.decompress(packed, MAX_LOG_BYTES + 1)
            if len(text) > MAX_LOG_BYTES or inflater.unconsumed_tail:
                error = error or f"the answer is larger than {MAX_LOG_BYTES} bytes; dropped"
        except zlib.error as exc:
            error = error or f"the answer does not decompress: {exc}"
        try:
            with self.engine.begin() as conn:
                stored = remote.finish_log_request(
                    conn, last.request_id, device_id, body=None if error else packed,
                    lines=last.lines, truncated=last.truncated, error=error,
                )  # fmt: skip
        except Exception:
            log.exception("could not store log answer %s", last.request_id)
            return
        if stored:
            self.stored += 1
        else:
            self.dropped += 1  # nobody asked, already answered, or another device answered

    def _drop(self, why: str) -> None:
        self.dropped += 1
        log.warning("%s", why)


def read_answer(engine: Engine, request_id: str) -> tuple[object, str | None]:
    """The request's row and its text (None while pending or failed); NotFoundError if unknown."""
    with engine.begin() as conn:
        row = remote.get_log_request(conn, request_id)
    if row is None:
        raise NotFoundError(f"no log request {request_id} (answers are kept {KEEP_ANSWERS})")
    text = zlib.decompress(row.body).decode("utf-8", errors="replace") if row.body is not None else None
    return row, text
