"""``fleet serve``: the HTTP API (uvicorn) and the MQTT ingester in one process, stopped in reverse order."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from types import FrameType

import uvicorn
from sqlalchemy import Engine

from fleet.api.app import create_app
from fleet.api.context import FleetContext
from fleet.config import FleetConfig
from fleet.errors import FleetError
from fleet.ingest.ingester import Ingester
from fleet.registry import Registry
from fleet.storage import create_engine_for_url
from protocol.signing import TrustedKeys
from protocol.topics import Topics

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn, reporting the bound address once it listens."""

    def __init__(self, config: uvicorn.Config, on_listening: threading.Event) -> None:
        super().__init__(config)
        self._on_listening = on_listening
        self.bound_port: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        for server in getattr(self, "servers", []):
            for sock in server.sockets or ():
                self.bound_port = int(sock.getsockname()[1])
                break
        self._on_listening.set()


class FleetServer:
    """Build every part from a FleetConfig; ``run()`` blocks until ``stop()`` or SIGTERM/SIGINT."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        trusted = TrustedKeys.from_paths(config.trusted_keys)
        if not len(trusted):
            raise FleetError(
                f"no public keys found in {', '.join(map(str, config.trusted_keys))}: "
                "the fleet would reject every bundle"
            )
        self.engine: Engine = create_engine_for_url(config.db_url)
        self.ingester = Ingester(config.mqtt, self.engine)
        self.context = FleetContext(
            engine=self.engine,
            registry=Registry(self.engine, config.artifacts, trusted),
            link=self.ingester,
            topics=Topics(config.mqtt.topic_prefix),
            max_bundle_bytes=config.max_bundle_bytes,
            base_url=config.base_url(),
        )
        self.app = create_app(self.context)
        self.listening = threading.Event()
        self._uvicorn = _Server(
            uvicorn.Config(
                self.app,
                host=config.host,
                port=config.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
            ),
            self.listening,
        )
        self._watch = threading.Thread(target=self._announce, name="fleet-announce", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    @property
    def port(self) -> int:
        return self._uvicorn.bound_port or self.config.port

    def _announce(self) -> None:
        self.listening.wait()
        if self._uvicorn.started:
            self.context.base_url = self.config.base_url(self.port)
            if self.config.public_url is None and self.config.host in ("0.0.0.0", "::"):
                log.warning(
                    "listening on a wildcard address: pass --public-url so devices get reachable URLs"
                )
            log.info("fleet listening on %s", self.url)

    def run(self) -> None:
        """Start the ingester, serve HTTP until told to stop, then stop the ingester and the database."""
        self.ingester.start()
        self._watch.start()
        try:
            self._uvicorn.run()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            raise FleetError(
                f"cannot listen on {self.config.host}:{self.config.port} (see the log above)"
            ) from exc
        finally:
            self.listening.set()
            log.info("fleet stopping")
            self.ingester.stop()
            self.engine.dispose()
        log.info("fleet stopped")

    def stop(self) -> None:
        self._uvicorn.should_exit = True


def serve(config: FleetConfig) -> int:
    """Run in the main thread: SIGTERM and SIGINT stop the server cleanly and exit 0."""
    server = FleetServer(config)
    stopped: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal first, then re-raises it to this handler after shutting down.
        stopped.append(signum)
        server.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
