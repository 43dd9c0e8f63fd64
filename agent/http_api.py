"""The local inference API: stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive.

``POST /v1/predict``  ``{"inputs": <one instance or a batch, or an object by input name>}``
                      -> every output and, for classifiers, predictions
``GET  /v1/health``   status (ok, degraded after recent inference failures, no-model), active
                      model, update state
``GET  /v1/model``    the active model's manifest

Binary bodies (``agent.predict_io``): ``application/octet-stream`` carries little-endian float32
instances of a single-input model and is answered with the primary output's float32 values
(``X-Output-Shape``, ``X-Classes``); ``application/x-npz`` carries every input by name and is
answered with every output by name (``X-Output-Shapes``). Any failure of the runtime is a 500
counted in telemetry; the interpreter is ready for the next request. The same API can also
listen on a Unix socket.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BadInputError
from agent.http_base import FastHandler
from agent.predict_io import (
    NPZ,
    parse_float32_body,
    parse_json_inputs,
    parse_npz_body,
    response_json,
    response_npz,
    shapes_header,
)
from agent.serving import ActiveModel, ModelHolder, PredictResult
from agent.serving_health import ServingHealth
from agent.telemetry import RequestMetrics
from protocol.errors import EdgefleetError

log = logging.getLogger(__name__)

BINARY = "application/octet-stream"
NO_MODEL = "no model is active yet; the agent installs one when the fleet deploys it"


class _Refused(Exception):  # noqa: N818 - internal control flow, never leaves the handler
    """A request answered with an error status (and counted in telemetry under ``kind``)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "bad_request",
        *,
        nonfinite: bool = False,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.nonfinite, self.close = nonfinite, close


def _form(content_type: str) -> str:
    """Which body form a Content-Type names: npz, float32 or (anything else) json."""
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    return {NPZ: "npz", BINARY: "float32"}.get(media, "json")


def _json_request(body: bytes) -> tuple[dict[str, Any], int]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[...
        raise _Refused(400, f'the body is not valid JSON ({exc}); send {{"inputs": [...]}}') from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise _Refused(400, 'the body must be a JSON object with an "inputs" member')
    top_k = payload.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 100:
        raise _Refused(400, '"top_k" must be a whole number from 1 to 100')
    return payload, top_k


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: InferenceAPI


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    api: InferenceAPI


class _Handler(FastHandler):
    server: _Server | _UnixServer

    def closing(self) -> bool:
        return self.server.api.stopping

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
    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._tracked(self._get)

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._tracked(self._post)

    def _get(self) -> None:
        api = self.server.api
        model = api.holder.current
        if self.path == "/v1/health":
            failures = api.health.recent_failures()
            status = "no-model" if model is None else "degraded" if failures else "ok"
            health: dict[str, Any] = {
                "status": status,
                "model": model.ref.model_dump(mode="json") if model else None,
                "update_state": api.update_state(),
            }
            if failures:
                health["recent_failures"] = failures
                health["last_error"] = api.health.last_error
            self._send_json(200, health)
        elif self.path == "/v1/model":
            if model is None:
                self._send_json(503, {"error": "no model is active yet"})
            else:
                self._send_json(200, model.manifest.model_dump(mode="json"))
        else:
            self._send_json(404, {"error": f"no such endpoint: GET {self.path}"})

    def _post(self) -> None:
        if self.path != "/v1/predict":
            self._discard_body()
            self._send_json(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        try:
            self._predict(self._read_body())
        except _Refused as refused:
            if refused.close:
                self.close_connection = True
            self._error(refused.status, refused.message, refused.kind, nonfinite=refused.nonfinite)
        except OSError:
            raise  # the connection itself failed: http.server closes it
        except Exception:  # a bug: answer and count it rather than drop the connection
            log.exception("predict request failed unexpectedly")
            self.close_connection = True
            self._error(500, "internal error; see the agent's log", "internal")

    def _read_body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_header is None:
            raise _Refused(411, "send the body with a Content-Length header", close=True)
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            raise _Refused(400, "Content-Length is not a number", close=True) from None
        limit = self.server.api.max_body_bytes
        if length > limit:  # the body stays unread
            raise _Refused(413, f"the body is {length} bytes; the limit is {limit}", "too_large", close=True)
        body: bytes = self.rfile.read(length)
        return body

    def _predict(self, body: bytes) -> None:
        api = self.server.api
        started = time.perf_counter()
        model = api.holder.current  # this request runs on this model, whatever swaps meanwhile
        form = _form(self.headers.get("Content-Type", ""))
        payload: dict[str, Any] = {}
        top_k = 1
        if form == "json":
            payload, top_k = _json_request(body)
        if model is None:
            raise _Refused(503, NO_MODEL, "no_model")
        try:
            if form == "json":
                arrays = parse_json_inputs(payload["inputs"], model)
            elif form == "npz":
                arrays = parse_npz_body(body, model, api.max_body_bytes)
            else:
                arrays = parse_float32_body(body, model)
            if len(arrays[0]) > api.max_instances:
                raise BadInputError(
                    f"a request may hold at most {api.max_instances} instances "
                    f"(api.max_instances), got {len(arrays[0])}"
                )
            result = model.predict(arrays)
        except BadInputError as exc:
            raise _Refused(400, str(exc), nonfinite="NaN" in str(exc)) from None
        except Exception as exc:  # the boundary: any failure is a 500, never a dropped connection
            self._inference_failed(model, exc)
            return
        api.metrics.record_success(
            (time.perf_counter() - started) * 1000,
            model.sha256,
            classes=result.classes,
            confidences=result.confidences,
            output_counts=model.output_counts(result),
            instances=len(arrays[0]),
            out_of_range=len(result.out_of_range),
        )
        self._respond(form, model, result, top_k)

    def _inference_failed(self, model: ActiveModel, exc: Exception) -> None:
        api = self.server.api
        if isinstance(exc, EdgefleetError):
            message = f"inference failed: {exc}"
            log.error("%s", message)
        else:
            message = f"inference failed: an internal error ({type(exc).__name__}); see the agent's log"
            log.exception("inference failed unexpectedly")
        api.metrics.record_error("inference", model_sha=model.sha256)
        api.health.failed(message)
        self._send_json(500, {"error": message})

    def _respond(self, form: str, model: ActiveModel, result: PredictResult, top_k: int) -> None:
        if form == "json":
            self._send_json(200, response_json(model, result, top_k))
            return
        extra = f"X-Model: {model.manifest.name}/{model.manifest.version}\r\n"
        if result.classes is not None:
            extra += f"X-Classes: {','.join(str(c) for c in result.classes.tolist())}\r\n"
        if result.out_of_range:
            extra += f"X-Out-Of-Range: {','.join(str(i) for i in result.out_of_range)}\r\n"
        if form == "npz":
            extra += f"X-Output-Shapes: {shapes_header(result)}\r\n"
            self._send(200, NPZ, response_npz(result), extra)
            return
        data = np.ascontiguousarray(result.outputs, dtype="<f4").tobytes()
        extra += f"X-Output-Shape: {','.join(str(d) for d in result.outputs.shape)}\r\n"
        self._send(200, BINARY, data, extra)

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
        max_instances: int = 4096,
        health: ServingHealth | None = None,
        update_state: Callable[[], str] = lambda: "idle",
        unix_socket: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.holder = holder
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_instances = max_instances
        self.health = health or ServingHealth()
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
