"""HTTP/1.1 request handling made cheap for the inference API: the request line and headers
parsed without ``email.parser`` and every response sent in one write.

Every read has a deadline: a new connection must deliver its request head within
``header_timeout_s`` (a keep-alive one from its next request's first byte, after at most
``idle_timeout_s`` idle), a body within ``body_timeout_s``; then 408 and the connection closes. Every
malformed request gets a 4xx with a JSON ``{"error": ...}`` body, never a traceback.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import logging
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from agent.http_limits import HttpLimits

log = logging.getLogger("agent.http_api")

_MAX_REQUEST_LINE = 8192
_MAX_HEADER_BYTES = 32768  # all header lines together: 64 connections hold at most 2 MiB of them
_MAX_HEADERS = 100
_WRITE_TIMEOUT_S = 30.0  # a client that does not read its answer
_LINGER_S = 1.0
_LINGER_BYTES = 1024 * 1024
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class Headers(dict[str, str]):
    """Request headers by lower-case name; ``get`` is case-insensitive like email.message's."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header, formatted once per second."""
    global _date_cache  # noqa: PLW0603 - a one-entry cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


class DeadlineExceededError(TimeoutError):
    """The request head or body did not arrive in time."""


class DeadlineReader(io.RawIOBase):
    """The socket's input, every ``recv`` bounded by the current deadline (or, with none, by the
    idle timeout): a client sending a byte now and then cannot stretch a read past the deadline."""

    def __init__(self, sock: socket.socket, idle_timeout_s: float) -> None:
        self._sock = sock
        self.idle_timeout_s = idle_timeout_s
        self.deadline: float | None = None
        self.received = 0  # bytes since the deadline was set

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.received = 0

    def idle(self) -> None:
        self.deadline = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            timeout = self.idle_timeout_s
        else:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise DeadlineExceededError("the client did not send in time")
        self._sock.settimeout(timeout)
        count = self._sock.recv_into(buffer)
        self.received += count
        return count


class SocketWriter(io.BufferedIOBase):
    """Unbuffered writes, each bounded by a timeout of its own (the reader's may be nearly spent)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.settimeout(_WRITE_TIMEOUT_S)
        self._sock.sendall(data)
        return len(data)


DISCARD_MAX = 64 * 1024
"""Largest body of a request that has none (a GET) read and skipped to keep the connection."""


class FastHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms on Linux) and every keep-alive request took 44 ms instead of ~1.
    disable_nagle_algorithm = True
    raw_requestline: bytes
    reader: DeadlineReader
    rfile: io.BufferedReader  # peek: the next request's first byte
    expect_continue = False  # the client waits for "100 Continue" before it sends the body
    _served = False  # a request was read on this connection already
    _linger = False  # closing after an error: input may still be arriving

    def limits(self) -> HttpLimits:
        return HttpLimits()

    def closing(self) -> bool:
        """Whether the server is stopping (every response then closes its connection)."""
        return False

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- connection --------------------------------------------------------------------------
    def setup(self) -> None:
        self.connection = self.request
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        limits = self.limits()
        self.reader = DeadlineReader(self.connection, limits.idle_timeout_s)
        self.reader.start(limits.header_timeout_s)  # a new connection owes its request head at once
        self.rfile = io.BufferedReader(self.reader)
        self.wfile = SocketWriter(self.connection)

    def finish(self) -> None:
        super().finish()
        if self._linger:
            self._drain_before_close()

    def _drain_before_close(self) -> None:
        """Stop sending, then read what the client still sends (briefly): closing a socket with
        unread input resets the connection, and the client could lose the error it was sent."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_S
            drained = 0
            while drained < _LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)

    def handle_one_request(self) -> None:
        """One request; every failure ends in an answer or a closed connection, never a traceback."""
        self.raw_requestline = b""
        self.requestline = self.command = ""
        try:
            if self._served and not self._next_request_started():
                return
            self._served = True
            self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > _MAX_REQUEST_LINE:
                self.send_error(414, f"the request line is longer than {_MAX_REQUEST_LINE} bytes")
                return
            if not self.parse_request():
                return
            self.reader.idle()  # a body read sets its own deadline
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(405, f"method {self.command} is not supported; use GET or POST")
                return
            method()
        except TimeoutError:
            self.close_connection = True
            if self.reader.deadline is not None and (self.raw_requestline or self.reader.received):
                with contextlib.suppress(OSError):
                    self.send_error(408, "the request did not arrive in time; the connection is closed")
                self._linger = False  # a slow client: no more time for it
        except OSError as exc:  # reset, broken pipe: nothing left to answer
            log.debug("connection from %s failed: %s", self.address_string(), exc)
            self.close_connection = True

    def _next_request_started(self) -> bool:
        """Wait (idle) for the next request on a keep-alive connection; its head's deadline starts
        with its first byte."""
        self.reader.idle()
        try:
            started = bool(self.rfile.peek(1))
        except TimeoutError:
            started = False
        if not started:
            self.close_connection = True
            return False
        self.reader.start(self.limits().header_timeout_s)
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """An error as JSON, and the connection closed (what follows on it cannot be trusted)."""
        self.close_connection = True
        self._linger = True
        self.send_json_error(code, message or _REASONS.get(code, "error"))

    def send_json_error(self, status: int, message: str, extra: str = "") -> None:
        if status == 405:
            extra += "Allow: GET, POST\r\n"
        self._send(status, "application/json", json.dumps({"error": message}).encode(), extra)

    def discard_body(self) -> None:
        """Skip a body nobody reads (small ones, keeping the connection); close on anything else."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if (
            self.headers.get("Transfer-Encoding")
            or length < 0
            or length > DISCARD_MAX
            or self.expect_continue
        ):
            self.close_connection = True
            self._linger = True
        elif length:
            self.reader.start(self.limits().body_timeout_s)
            self.rfile.read(length)
            self.reader.idle()

    # -- plumbing ----------------------------------------------------------------------------
    def parse_request(self) -> bool:
        """The request line and headers, without ``email.parser`` (a third of the per-request
        cost in the stdlib version); the same rules for keep-alive. ``Expect: 100-continue`` is
        answered only once the body is wanted (``continue_body``)."""
        self.command = ""
        self.request_version = self.default_request_version
        self.close_connection = True
        self.expect_continue = False
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) == 3 and words[2] == "HTTP/2.0":
            self.send_error(400, "HTTP/2 is not supported; use HTTP/1.1")
            return False
        if len(words) != 3 or words[2] not in ("HTTP/1.1", "HTTP/1.0") or not words[0].isalpha():
            self.send_error(
                400, f"bad request line {self.requestline[:100]!r}; expected METHOD /path HTTP/1.1"
            )
            return False
        command, path, version = words
        self.command, self.path, self.request_version = command, path, version
        headers = self._read_headers()
        if headers is None:
            return False
        self.headers = headers  # type: ignore[assignment]
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            version == "HTTP/1.0" and connection != "keep-alive"
        )
        self.expect_continue = version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue"
        return True

    def continue_body(self) -> None:
        """Tell a client waiting on ``Expect: 100-continue`` to send its body."""
        if self.expect_continue:
            self.expect_continue = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _read_headers(self) -> Headers | None:
        """The header lines up to the blank line; None after answering a malformed block."""
        headers = Headers()
        left = _MAX_HEADER_BYTES
        while True:
            line = self.rfile.readline(left + 1)
            if len(line) > left:
                self.send_error(431, f"the request headers are longer than {_MAX_HEADER_BYTES} bytes")
                return None
            left -= len(line)
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                self.send_error(400, "the connection ended inside the request headers")
                return None
            name, sep, value = line.decode("iso-8859-1").partition(":")
            if not sep or not name.strip():
                self.send_error(400, f"malformed header line {line[:80]!r}")
                return None
            headers[name.strip().lower()] = value.strip()
            if len(headers) > _MAX_HEADERS:
                self.send_error(431, f"more than {_MAX_HEADERS} request headers")
                return None

    def _send(self, status: int, content_type: str, data: bytes, extra: str = "") -> None:
        """Status line, headers and body in one write (one syscall, one segment for small bodies)."""
        if self.close_connection or self.closing():
            self.close_connection = True
            extra += "Connection: close\r\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nDate: {http_date()}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
        )
        self.wfile.write(head.encode("latin-1") + data)
        if log.isEnabledFor(logging.DEBUG):
            self.log_request(status, len(data))
