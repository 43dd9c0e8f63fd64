"""The local inference API: stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive.

``POST /v1/predict``  ``{"inputs": <one instance or a batch, or an object by input name>}``
                      -> every output and, for classifiers, predictions
``GET  /v1/health``   status (ok, degraded after recent inference failures, no-model), active
                      model, update state
``GET  /v1/model``    the active model's manifest
``GET  /metrics``     Prometheus text (``agent.metrics_text``) when ``[api] metrics`` is on; else 404

Binary bodies (``agent.predict_io``): ``application/octet-stream`` carries little-endian float32
instances of a single-input model and is answered with the primary output's float32 values
(``X-Output-Shape``, ``X-Classes``); ``application/x-npz`` carries every input by name and is
answered with every output by name (``X-Output-Shapes``). Any failure of the runtime is a 500
counted in telemetry; the interpreter is ready for the next request. It can listen on a Unix socket.

Limits (``agent.http_limits``, the ``[api]`` section): a connection cap (503 beyond it), a byte
budget shared by the requests in flight (a request waits briefly for room, then gets 503 with
``Retry-After``; one that can never fit gets 413), a lower body limit for JSON than for binary
forms, JSON nesting and parse cost checked before parsing, and deadlines for the request head and
body (``agent.http_base``).
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import HTTPServer
from pathlib import Path
from typing import Any

from agent.capture import Capture
from agent.errors import BadInputError
from agent.http_base import FastHandler
from agent.http_limits import (
    MAX_JSON_DEPTH,
    ByteBudget,
    ConnectionCap,
    HttpLimits,
    Reservation,
    json_depth,
    json_parse_cost,
    return_large_buffers_to_the_system,
)
from agent.http_requests import (
    BUSY,
    NO_MODEL,
    RETRY_AFTER_S,
    Refused,
    body_form,
    body_length,
    busy_response,
    json_request,
    npz_unpacked_bytes,
)
from agent.predict_io import (
    binary_answer,
    parse_float32_body,
    parse_json_inputs,
    parse_npz_body,
    response_json,
)
from agent.serving import ActiveModel, ModelHolder, PredictResult
from agent.serving_health import ServingHealth
from agent.telemetry import RequestMetrics
from protocol.errors import EdgefleetError

log = logging.getLogger(__name__)


class _Server(ConnectionCap, HTTPServer):
    allow_reuse_address = True
    api: InferenceAPI


class _UnixServer(ConnectionCap, socketserver.UnixStreamServer):
    api: InferenceAPI


class _Handler(FastHandler):
    server: _Server | _UnixServer

    def limits(self) -> HttpLimits:
        return self.server.api.limits

    def closing(self) -> bool:
        return self.server.api.stopping

    def _send_json(self, status: int, body: object, extra: str = "") -> None:
        self._send(status, "application/json", json.dumps(body, allow_nan=False).encode(), extra)

    def _error(self, refused: Refused) -> None:
        self.server.api.metrics.record_error(refused.kind, nonfinite=refused.nonfinite)
        extra = f"Retry-After: {RETRY_AFTER_S}\r\n" if refused.retry_after else ""
        self._send_json(refused.status, {"error": refused.message}, extra)

    def _tracked(self, action: Callable[[], None]) -> None:
        api = self.server.api
        api.enter()
        try:
            action()
        finally:
            api.leave()

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self.discard_body()
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
        elif self.path == "/metrics" and api.metrics_page is not None:
            self._send(200, *api.metrics_page())
        else:
            self._send_json(404, {"error": f"no such endpoint: GET {self.path}"})

    def _post(self) -> None:
        if self.path != "/v1/predict":
            self.discard_body()
            self._send_json(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        form = body_form(self.headers.get("Content-Type", ""))
        hold = Reservation(self.server.api.budget)
        try:
            self._predict(form, self._read_body(form, hold), hold)
        except Refused as refused:
            if refused.close:
                self.close_connection = True
                self._linger = True  # the body may be arriving still
            self._error(refused)
        except OSError:
            raise  # the connection itself failed (or timed out): the handler closes it
        except Exception:  # a bug: answer and count it rather than drop the connection
            log.exception("predict request failed unexpectedly")
            self.close_connection = True
            self._error(Refused(500, "internal error; see the agent's log", "internal"))
        finally:
            hold.close()

    def _reserve(self, hold: Reservation, nbytes: int, what: str, *, unread: bool) -> None:
        """Room in the in-flight budget for ``nbytes``, or the request is refused (413 if it can
        never fit, else 503 after a short wait)."""
        api = self.server.api
        if nbytes > api.budget.total:
            raise Refused(
                413,
                f"{what} needs about {nbytes} bytes of memory; requests in flight may hold at most "
                f"{api.budget.total} (api.max_inflight_bytes): send fewer instances per request",
                "too_large",
                close=unread,
            )
        if not hold.take(nbytes, api.limits.busy_wait_s):
            raise Refused(503, BUSY + " (api.max_inflight_bytes)", "busy", close=unread, retry_after=True)

    def _read_body(self, form: str, hold: Reservation) -> bytes:
        api = self.server.api
        length = body_length(self.headers, form, api.max_body_bytes, api.limits.max_json_body_bytes)
        # A binary body counts twice: the body and the runtime's copy of the batch.
        self._reserve(hold, length if form == "json" else 2 * length, "the body", unread=True)
        self.continue_body()
        self.reader.start(api.limits.body_timeout_s)
        body: bytes = self.rfile.read(length)
        self.reader.idle()
        if len(body) < length:
            raise Refused(400, f"the body ended after {len(body)} of {length} bytes", close=True)
        return body

    def _predict(self, form: str, body: bytes, hold: Reservation) -> None:
        api = self.server.api
        started = time.perf_counter()
        model = api.holder.current  # this request runs on this model, whatever swaps meanwhile
        payload: dict[str, Any] = {}
        top_k = 1
        if form == "json":
            depth = json_depth(body)
            if depth > MAX_JSON_DEPTH:
                raise Refused(
                    400,
                    f"the body is not valid JSON for this API: it nests {depth} levels deep, "
                    f"at most {MAX_JSON_DEPTH} are read",
                )
            self._reserve(hold, json_parse_cost(body), "parsing this JSON body", unread=False)
            payload, top_k = json_request(body)
        elif form == "npz":
            self._reserve(hold, npz_unpacked_bytes(body), "unpacking this .npz body", unread=False)
        if model is None:
            raise Refused(503, NO_MODEL, "no_model")
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
            raise Refused(400, str(exc), nonfinite="NaN" in str(exc)) from None
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
            invoke_ms=result.invoke_ms,
            cpu_ms=result.cpu_ms,
            features=model.input_features(arrays[0]),
        )
        if api.capture is not None:
            api.capture.offer(model, arrays, result)
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
        self._send(200, *binary_answer(form == "npz", model, result))


class _UnixHandler(_Handler):
    disable_nagle_algorithm = False  # not a TCP socket


class InferenceAPI:
    """Owns the HTTP server thread; ``stop`` lets requests in flight finish first."""

    def __init__(  # noqa: PLR0913 - the server's collaborators, injected one by one so tests can swap each
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
        limits: HttpLimits | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.holder = holder
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_instances = max_instances
        self.health = health or ServingHealth()
        self.update_state = update_state
        self.metrics_page: Callable[[], tuple[str, bytes]] | None = None  # GET /metrics; off: 404
        self.capture: Capture | None = None  # told of every served request; keeps what it wants
        self.unix_socket = unix_socket
        self.limits = limits or HttpLimits()
        self.budget = ByteBudget(self.limits.max_inflight_bytes)
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
        return_large_buffers_to_the_system()  # else RSS outgrows max_inflight_bytes
        server = _Server((self.host, self.port), _Handler, bind_and_activate=False)
        server.request_queue_size = self.limits.backlog
        try:
            server.server_bind()
            server.server_activate()
        except OSError as exc:
            server.server_close()
            raise EdgefleetError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); is another agent running?"
            ) from exc
        server.start_cap(self.limits.max_connections, busy_response())
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
            unix = _UnixServer(str(path), _UnixHandler, bind_and_activate=False)
            unix.request_queue_size = self.limits.backlog
            try:
                unix.server_bind()
                unix.server_activate()
            except OSError:
                unix.server_close()
                raise
            os.chmod(path, 0o660)
        except OSError as exc:
            self.stop()
            raise EdgefleetError(f"cannot listen on the Unix socket {path} ({exc.strerror or exc})") from exc
        unix.start_cap(self.limits.max_connections, busy_response())
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
        server.stop_cap()
        if unix is not None:
            unix.server_close()
            unix.stop_cap()
            if self.unix_socket is not None:
                self.unix_socket.unlink(missing_ok=True)
        if self._thread is not None:
            self._thread.join(timeout_s)
