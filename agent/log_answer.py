"""Answering the fleet's log requests: read, redact, compress, cut into chunks, publish.

The request arrives on paho's network thread; the answer is built on a thread of its own, so
neither MQTT nor an update in progress waits for it (the update machine never holds anything
this needs). One answer is built at a time: a request while one is being built is answered
with an error, never queued without bound.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.logfile import excerpt
from protocol.remote import LOG_CHUNK_BYTES, MAX_LOG_CHUNKS, LogChunk, LogRequest
from protocol.topics import Topics

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], None]


def chunks(
    device_id: str, request: LogRequest, folder: Path, max_bytes: int, secrets: Iterable[str]
) -> list[LogChunk]:
    """The whole answer to ``request``: at least one chunk, at most ``MAX_LOG_CHUNKS``."""
    try:
        found = excerpt(folder, request, max_bytes, secrets)
    except OSError as exc:
        return [_error(device_id, request, f"cannot read the log in {folder}: {exc.strerror or exc}")]
    packed = zlib.compress(found.text.encode("utf-8"), 6)
    pieces = [packed[i : i + LOG_CHUNK_BYTES] for i in range(0, len(packed), LOG_CHUNK_BYTES)] or [b""]
    if len(pieces) > MAX_LOG_CHUNKS:  # cannot happen below MAX_LOG_BYTES; never send a partial stream
        return [_error(device_id, request, "the answer does not fit in the chunk limit")]
    return [
        LogChunk(
            device_id=device_id,
            request_id=request.request_id,
            seq=seq,
            total=len(pieces),
            data=LogChunk.encode(piece),
            lines=found.lines,
            truncated=found.truncated,
        )
        for seq, piece in enumerate(pieces)
    ]


def _error(device_id: str, request: LogRequest, reason: str) -> LogChunk:
    return LogChunk(
        device_id=device_id,
        request_id=request.request_id,
        seq=0,
        total=1,
        data=LogChunk.encode(zlib.compress(b"")),
        lines=0,
        error=reason,
    )


class LogResponder:
    def __init__(
        self,
        device_id: str,
        topics: Topics,
        folder: Path,
        publish: Publish,
        *,
        enabled: Callable[[], bool],
        max_bytes: Callable[[], int],
        secrets: Callable[[], list[str]],
    ) -> None:
        self.device_id = device_id
        self.topics = topics
        self.folder = folder
        self.publish = publish
        self.enabled = enabled
        self.max_bytes = max_bytes
        self.secrets = secrets
        self._busy = threading.Lock()
        self.answered = 0

    def request(self, request: LogRequest) -> None:
        """Start answering ``request`` in the background (called on paho's network thread)."""
        if not self.enabled():
            self._send(
                [
                    _error(
                        self.device_id,
                        request,
                        "this device does not answer log requests ([remote] logs = false)",
                    )
                ],
                request,
            )
            return
        if not self._busy.acquire(blocking=False):
            self._send([_error(self.device_id, request, "busy with another log request; ask again")], request)
            return
        threading.Thread(target=self._answer, args=(request,), name="log-answer", daemon=True).start()

    def _answer(self, request: LogRequest) -> None:
        try:
            answer = chunks(self.device_id, request, self.folder, self.max_bytes(), self.secrets())
        except Exception:
            log.exception("could not answer log request %s", request.request_id)
            return
        finally:
            # Free before sending: once the answer is out, the next request must find it free.
            self._busy.release()
        self._send(answer, request)

    def _send(self, answer: list[LogChunk], request: LogRequest) -> None:
        topic = self.topics.logs(self.device_id, request.request_id)
        for chunk in answer:
            self.publish(topic, chunk.model_dump_json().encode(), 1, False)
        self.answered += 1
        log.info(
            "answered log request %s: %d line(s) in %d chunk(s)%s",
            request.request_id,
            answer[0].lines,
            len(answer),
            f" ({answer[0].error})" if answer[0].error else "",
        )
