"""What bounds the inference API under hostile or excessive load: connections, memory, time.

- **Connections**: the listen backlog and a cap on connections served at once; a connection over
  the cap is answered ``503`` with ``Retry-After`` by one small thread (``Refuser``) instead of a
  handler thread of its own.
- **Memory**: one byte budget (``ByteBudget``) shared by every request in flight. A request reserves
  what its body and its parse will need *before* reading or parsing; one that does not fit waits
  briefly, then gets 503; one that could never fit gets 413. A JSON body's parse cost is bounded
  from a count of its tokens (``json_parse_cost``) and its nesting depth is checked
  (``json_depth``) before ``json.loads`` sees it.
- **Time**: deadlines for the request head and for the body (``agent.http_base``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import selectors
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from agent.config import ApiConfig

log = logging.getLogger("agent.http_api")

MIB = 1024 * 1024


@dataclass(frozen=True)
class HttpLimits:
    """The numbers of the ``[api]`` section that bound the server (see ``ApiConfig``)."""

    backlog: int = 128
    max_connections: int = 64
    max_json_body_bytes: int = 4 * MIB
    max_inflight_bytes: int = 64 * MIB
    busy_wait_s: float = 1.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0

    @classmethod
    def from_config(cls, api: ApiConfig) -> HttpLimits:
        return cls(
            backlog=api.backlog,
            max_connections=api.max_connections,
            max_json_body_bytes=api.max_json_body_bytes,
            max_inflight_bytes=api.max_inflight_bytes,
            busy_wait_s=api.busy_wait_s,
            header_timeout_s=api.header_timeout_s,
            body_timeout_s=api.body_timeout_s,
            idle_timeout_s=api.idle_timeout_s,
        )


# -- memory --------------------------------------------------------------------------------------
class ByteBudget:
    """Bytes reserved by requests in flight, never more than ``total`` at once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._used = 0
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        with self._changed:
            return self._used

    def acquire(self, nbytes: int, wait_s: float) -> bool:
        """Reserve ``nbytes``, waiting up to ``wait_s`` for others to finish; False if they did not."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while self._used + nbytes > self.total:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            self._used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        if nbytes:
            with self._changed:
                self._used -= nbytes
                self._changed.notify_all()


class Reservation:
    """What one request holds of a ``ByteBudget``; ``close`` gives it all back."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, nbytes: int, wait_s: float) -> bool:
        if not self.budget.acquire(nbytes, wait_s):
            return False
        self.held += nbytes
        return True

    def close(self) -> None:
        held, self.held = self.held, 0
        self.budget.release(held)


# What the parse of one JSON token can allocate at most (CPython 3.11, 64-bit), including the
# NumPy float64 and float32 copies ``parse_json_tensor`` makes of every number:
# - a ',' brings one more element: its list slot (8 bytes, over-allocated) and, at most, a float
#   (24 bytes) or a small int, plus 12 bytes in the NumPy copies;
# - a '[' or '{' brings a container (an empty list is 72 bytes with its GC header, a dict 80) and
#   its first element;
# - a ':' brings a dict entry (with the dict's spare room);
# - a byte inside a string: up to 12 (the decoder's buffer, a str stored 4 bytes per character
#   once it holds one astral character, NumPy's 4-byte-per-character copy);
# - any other byte: at most 4 bytes of big-int payload.
# ``tests/agent/test_http_limits.py`` measures real parses against this bound.
_COST_PER_COMMA = 56
_COST_PER_OPEN = 160
_COST_PER_COLON = 160
_COST_PER_STRING_BYTE = 13
_COST_PER_BYTE = 4
_COST_BASE = 64 * 1024
_FEW_QUOTES = 256  # a request's keys: their strings are measured one by one


def _string_bytes(body: bytes) -> int:
    """The bytes inside JSON strings: measured when there are few strings and no escapes (a
    valid request: its keys), else every byte is taken to be one."""
    quotes = body.count(b'"')
    if quotes > _FEW_QUOTES or b"\\" in body:
        return len(body)
    inside, position = 0, 0
    for _ in range(quotes // 2):
        opening = body.find(b'"', position)
        closing = body.find(b'"', opening + 1)
        inside += closing - opening - 1
        position = closing + 1
    return inside


MAX_JSON_DEPTH = 32
"""Deepest JSON nesting accepted: an object holding tensors of up to ~30 dimensions."""

_OPENERS = b"[{"
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_CHUNK = 1 << 18


def json_parse_cost(body: bytes) -> int:
    """An upper bound of the memory ``json.loads`` and the tensor conversion allocate for ``body``."""
    commas = body.count(b",")
    opens = body.count(b"[") + body.count(b"{")
    colons = body.count(b":")
    strings = _string_bytes(body)
    others = len(body) - commas - opens - colons - strings
    return (
        _COST_BASE
        + _COST_PER_COMMA * commas
        + _COST_PER_OPEN * opens
        + _COST_PER_COLON * colons
        + _COST_PER_STRING_BYTE * strings
        + _COST_PER_BYTE * max(others, 0)
    )


def json_depth(body: bytes) -> int:
    """The deepest bracket nesting of ``body`` (brackets inside strings count too: a valid request
    has none), without parsing it and in bounded memory."""
    brackets = np.frombuffer(body.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    depth = deepest = 0
    for start in range(0, len(brackets), _DEPTH_CHUNK):
        chunk = brackets[start : start + _DEPTH_CHUNK]
        steps = np.where((chunk == _OPENERS[0]) | (chunk == _OPENERS[1]), 1, -1)
        running = np.cumsum(steps) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_MMAP_THRESHOLD = 1024 * 1024


def return_large_buffers_to_the_system() -> None:
    """Have glibc map every allocation over 1 MiB on its own, and unmap it when freed (smaller ones,
    such as one image of a vision model, stay in the heap: mapping each costs a page fault per page).

    By default glibc raises that threshold to the size of the largest block freed so far (up to
    32 MiB): after one large request, request bodies and arrays come from per-thread heaps that keep
    their memory after free, and the process's RSS grew to twice the in-flight budget. Fixing the
    threshold keeps RSS close to what the requests in flight hold. A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused; large buffers stay in the heap")


# -- connections ---------------------------------------------------------------------------------
class Refuser:
    """Answers connections over the cap from one thread: the canned 503 is written at once, then
    whatever the client still sends is read and dropped until it closes (at most ``linger_s``).
    Closing with unread input would reset the connection, and the client could lose the answer."""

    def __init__(self, response: bytes, *, linger_s: float = 2.0, most: int = 1024) -> None:
        self._response = response
        self._linger_s = linger_s
        self._most = most
        self._selector = selectors.DefaultSelector()
        self._incoming: collections.deque[socket.socket] = collections.deque()
        self._deadlines: dict[socket.socket, float] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="http-api-refuser", daemon=True)
        self._thread.start()

    def refuse(self, sock: socket.socket) -> None:
        """Called by the accepting thread; never blocks."""
        try:
            sock.setblocking(False)
            sock.send(self._response)  # a few hundred bytes: the new socket's buffer takes them
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(self._deadlines) + len(self._incoming) >= self._most:
            sock.close()  # refusing is itself overloaded: drop rather than grow
            return
        self._incoming.append(sock)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._thread.join(5)
        for sock in [*self._deadlines, *self._incoming]:
            sock.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        while not self._stopped:
            while self._incoming:
                sock = self._incoming.popleft()
                self._deadlines[sock] = time.monotonic() + self._linger_s
                self._selector.register(sock, selectors.EVENT_READ)
            for key, _ in self._selector.select(timeout=0.5):
                if key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                refused = key.fileobj
                assert isinstance(refused, socket.socket)
                try:
                    data = refused.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(refused)
            now = time.monotonic()
            for sock in [s for s, deadline in self._deadlines.items() if deadline <= now]:
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._deadlines[sock]
        sock.close()


class ConnectionCap(socketserver.ThreadingMixIn):
    """A threading server that serves at most ``max_connections`` at once; the others get a 503.
    Call ``start_cap`` before serving."""

    daemon_threads = True
    _slots: threading.BoundedSemaphore
    _refuser: Refuser

    def start_cap(self, max_connections: int, busy_response: bytes) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._refuser = Refuser(busy_response)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuser.refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (reset, timed out) is routine: one debug line, no traceback.
        Anything else is a bug and logged with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.error("request from %s failed unexpectedly", client_address, exc_info=exc)

    def stop_cap(self) -> None:
        refuser = getattr(self, "_refuser", None)
        if refuser is not None:
            refuser.close()
