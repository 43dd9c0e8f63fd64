"""The local inference API: stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive, JSON bodies.

``POST /v1/predict``  ``{"inputs": <one instance or a batch>}`` -> outputs and predictions
``GET  /v1/health``   status, active model, update state
``GET  /v1/model``    the active model's manifest
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.errors import BadInputError
from agent.serving import ModelHolder, parse_inputs
from agent.telemetry import RequestMetrics
from protocol.errors import EdgefleetError

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: InferenceAPI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms on Linux) and every keep-alive request took 44 ms instead of ~1.
    disable_nagle_algorithm = True
    server: _Server
    timeout = 60  # an idle keep-alive connection is closed after this many seconds

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing ----------------------------------------------------------------------------
    def _send_json(self, status: int, body: object) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection or self.server.api.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

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
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            self._error(400, f'the body is not valid JSON ({exc}); send {{"inputs": [...]}}', "bad_request")
            return
        if not isinstance(payload, dict) or "inputs" not in payload:
            self._error(400, 'the body must be a JSON object with an "inputs" member', "bad_request")
            return
        if model is None:
            self._error(
                503, "no model is active yet; the agent installs one when the fleet deploys it", "no_model"
            )
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
            self._error(500, f"inference failed: {exc}", "inference")
            return
        latency_ms = (time.perf_counter() - started) * 1000
        predictions = result.predictions
        response: dict[str, Any] = {
            "model": {"name": model.manifest.name, "version": model.manifest.version},
            "outputs": result.outputs.tolist(),
        }
        if predictions is not None:
            response["predictions"] = [p.as_json() for p in predictions]
        api.metrics.record_success(
            latency_ms,
            [p.index for p in predictions] if predictions is not None else None,
            [p.confidence for p in predictions] if predictions is not None else None,
        )
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
    ) -> None:
        self.host = host
        self.port = port
        self.holder = holder
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.update_state = update_state
        self.stopping = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
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
        return self

    def enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def stop(self, timeout_s: float = 10.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping = True
        server.shutdown()  # no new connections
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
