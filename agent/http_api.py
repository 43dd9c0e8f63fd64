"""The local inference API: stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive, JSON bodies.

``POST /v1/predict``  ``{"inputs": <one instance or a batch>}`` -> outputs and predictions
``GET  /v1/health``   status, active model, update state
``GET  /v1/model``    the active model's manifest

A ``POST /v1/predict`` with ``Content-Type: application/octet-stream`` carries little-endian
float32 instances back to back and is answered with the float32 outputs (``X-Output-Shape``,
``X-Classes``). The same API can also listen on a Unix socket.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import socketserver
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BadInputError
from agent.serving import ModelHolder, parse_inputs, parse_tensor_body
from agent.telemetry import RequestMetrics
from protocol.errors import EdgefleetError

log = logging.getLogger(__name__)

BINARY = "application/octet-stream"
NO_MODEL = "no model is active yet; the agent installs one when the fleet deploys it"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: InferenceAPI


_MAX_HEADER_LINE = 65536
_MAX_HEADERS = 100
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class _Headers(dict[str, str]):
    """Request headers by lower-case name; ``get`` is case-insensitive like email.message's."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header, formatted once per second."""
    global _date_cache  # noqa: PLW0603 - a one-entry cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    api: InferenceAPI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms on Linux) and every keep-alive request took 44 ms instead of ~1.
    disable_nagle_algorithm = True
    server: _Server | _UnixServer
    raw_requestline: bytes
    timeout = 60  # an idle keep-alive connection is closed after this many seconds

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing ----------------------------------------------------------------------------
    def parse_request(self) -> bool:
        """The request line and headers, without ``email.parser`` (a third of the per-request
        cost in the stdlib version); the same rules for keep-alive and ``Expect: 100-continue``."""
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3:
            self.send_error(400, f"Bad request line {self.requestline!r}")
            return False
        command, path, version = words
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self.send_error(505, f"HTTP version {version} is not supported; use HTTP/1.1")
            return False
        self.command, self.path, self.request_version = command, path, version
        headers = _Headers()
        while True:
            line = self.rfile.readline(_MAX_HEADER_LINE + 1)
            if len(line) > _MAX_HEADER_LINE:
                self.send_error(431, "a header line is too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = line.decode("iso-8859-1").partition(":")
            if not sep:
                self.send_error(400, f"malformed header line {line[:80]!r}")
                return False
            headers[name.strip().lower()] = value.strip()
            if len(headers) > _MAX_HEADERS:
                self.send_error(431, "too many headers")
                return False
        self.headers = headers  # type: ignore[assignment]
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            version == "HTTP/1.0" and connection != "keep-alive"
        )
        if version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def _send(self, status: int, content_type: str, data: bytes, extra: str = "") -> None:
        """Status line, headers and body in one write (one syscall, one segment for small bodies)."""
        if self.close_connection or self.server.api.stopping:
            self.close_connection = True
            extra += "Connection: close\r\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nDate: {_http_date()}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
        )
        self.wfile.write(head.encode("latin-1") + data)
        if log.isEnabledFor(logging.DEBUG):
            self.log_request(status, len(data))

    def _send_json(self, status: int, body: object) -> None:
        self._send(status, "application/json", json.dumps(body, allow_nan=False).encode())

    def _error(self, status: int, message: str, kind: str, nonfinite: bool = False) -> None:
        self.server.api.metrics.record_error(kind, nonfinite=nonfinite)
        self._send_json(status, {"error": message})

    def _tracked(self, action: Callable[[], None]) -> None:
        api = self.server.api
        api.enter()
        try:
            action()
        finally:
            api.leave()

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._tracked(self._get)

    def do_POST(self) -> None:
        self._tracked(self._post)

    def _get(self) -> None:
        api = self.server.api
        model = api.holder.current
        if self.path == "/v1/health":
            self._send_json(
                200,
                {
                    "status": "ok" if model else "no-model",
                    "model": model.ref.model_dump(mode="json") if model else None,
                    "update_state": api.update_state(),
                },
            )
        elif self.path == "/v1/model":
            if model is None:
                self._send_json(503, {"error": "no model is active yet"})
            else:
                self._send_json(200, model.manifest.model_dump(mode="json"))
        else:
            self._send_json(404, {"error": f"no such endpoint: GET {self.path}"})

    def _post(self) -> None:
        api = self.server.api
        if self.path != "/v1/predict":
            self._discard_body()
            self._send_json(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_header is None:
            self.close_connection = True
            self._error(411, "send the JSON body with a Content-Length header", "bad_request")
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._error(400, "Content-Length is not a number", "bad_request")
            return
        if length > api.max_body_bytes:
            self.close_connection = True  # the body stays unread
            self._error(413, f"the body is {length} bytes; the limit is {api.max_body_bytes}", "too_large")
            return
        body = self.rfile.read(length)
        started = time.perf_counter()
        model = api.holder.current  # this request runs on this model, whatever swaps meanwhile
        binary = self.headers.get("Content-Type", "").split(";")[0].strip() == BINARY
        top_k = 1
        if binary:
            if model is None:
                self._error(503, NO_MODEL, "no_model")
                return
            try:
                batch = parse_tensor_body(body, model.input_spec)
            except BadInputError as exc:
                self._error(400, str(exc), "bad_request", nonfinite="NaN" in str(exc))
                return
        else:
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                self._error(
                    400, f'the body is not valid JSON ({exc}); send {{"inputs": [...]}}', "bad_request"
                )
                return
            if not isinstance(payload, dict) or "inputs" not in payload:
                self._error(400, 'the body must be a JSON object with an "inputs" member', "bad_request")
                return
            top_k = payload.get("top_k", 1)
            if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 100:
                self._error(400, '"top_k" must be a whole number from 1 to 100', "bad_request")
                return
            if model is None:
                self._error(503, NO_MODEL, "no_model")
                return
            try:
                batch = parse_inputs(payload["inputs"], model.input_spec)
            except BadInputError as exc:
                self._error(400, str(exc), "bad_request", nonfinite="NaN" in str(exc))
                return
        try:
            result = model.predict(batch)
        except EdgefleetError as exc:
            log.error("inference failed: %s", exc)
            self.server.api.metrics.record_error("inference", model_sha=model.sha256)
            self._send_json(500, {"error": f"inference failed: {exc}"})
            return
        latency_ms = (time.perf_counter() - started) * 1000
        api.metrics.record_success(
            latency_ms,
            model.sha256,
            classes=result.classes,
            confidences=result.confidences,
            output_counts=model.output_counts(result),
            instances=len(batch),
            out_of_range=model.out_of_range(batch),
        )
        if binary:
            data = np.ascontiguousarray(result.outputs, dtype="<f4").tobytes()
            extra = (
                f"X-Output-Shape: {','.join(str(d) for d in result.outputs.shape)}\r\n"
                f"X-Model: {model.manifest.name}/{model.manifest.version}\r\n"
            )
            if result.classes is not None:
                extra += f"X-Classes: {','.join(str(c) for c in result.classes.tolist())}\r\n"
            self._send(200, BINARY, data, extra)
            return
        response: dict[str, Any] = {
            "model": {"name": model.manifest.name, "version": model.manifest.version},
            "outputs": result.outputs.tolist(),
        }
        predictions = result.predictions
        if predictions is not None:
            response["predictions"] = [p.as_json() for p in predictions]
            if top_k > 1:
                for entry, top in zip(response["predictions"], result.top(top_k), strict=True):
                    entry["top"] = [t.as_json() for t in top]
        self._send_json(200, response)

    def _discard_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= self.server.api.max_body_bytes:
            self.rfile.read(length)
        elif length:
            self.close_connection = True


class _UnixHandler(_Handler):
    disable_nagle_algorithm = False  # not a TCP socket


class InferenceAPI:
    """Owns the HTTP server thread; ``stop`` lets requests in flight finish first."""

    def __init__(
        self,
        host: str,
        port: int,
        holder: ModelHolder,
        metrics: RequestMetrics,
        *,
        max_body_bytes: int = 16 * 1024 * 1024,
        update_state: Callable[[], str] = lambda: "idle",
        unix_socket: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.holder = holder
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.update_state = update_state
        self.unix_socket = unix_socket
        self.stopping = False
        self._server: _Server | None = None
        self._unix: _UnixServer | None = None
        self._thread: threading.Thread | None = None
        self._unix_thread: threading.Thread | None = None
        self._in_flight = 0
        self._idle = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> InferenceAPI:
        try:
            server = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise EdgefleetError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); is another agent running?"
            ) from exc
        server.api = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="http-api", daemon=True)
        self._thread.start()
        if self.unix_socket is not None:
            self._start_unix(self.unix_socket)
        return self

    def _start_unix(self, path: Path) -> None:
        try:
            if path.is_socket():
                path.unlink()  # left behind by a process that died
            path.parent.mkdir(parents=True, exist_ok=True)
            unix = _UnixServer(str(path), _UnixHandler)
            os.chmod(path, 0o660)
        except OSError as exc:
            self.stop()
            raise EdgefleetError(f"cannot listen on the Unix socket {path} ({exc.strerror or exc})") from exc
        unix.api = self
        self._unix = unix
        self._unix_thread = threading.Thread(target=unix.serve_forever, name="http-api-unix", daemon=True)
        self._unix_thread.start()

    def enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def stop(self, timeout_s: float = 10.0) -> None:
        server, self._server = self._server, None
        unix, self._unix = self._unix, None
        if server is None:
            return
        self.stopping = True
        server.shutdown()  # no new connections
        if unix is not None:
            unix.shutdown()
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
        server.server_close()
        if unix is not None:
            unix.server_close()
            if self.unix_socket is not None:
                self.unix_socket.unlink(missing_ok=True)
        if self._thread is not None:
            self._thread.join(timeout_s)
