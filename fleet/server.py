"""``fleet serve``: the HTTP API (uvicorn) and the MQTT ingester in one process, stopped in reverse order."""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
import time
from datetime import UTC, datetime
from types import FrameType
from urllib.parse import urlsplit

import uvicorn
from sqlalchemy import Engine

from fleet.alerts import AlertEngine, alerts_topic
from fleet.api.app import create_app
from fleet.api.context import FleetContext
from fleet.auth import load_tokens
from fleet.broker_files import PasswordFile
from fleet.config import FleetConfig
from fleet.errors import FleetError, StaleLeaderError
from fleet.ingest.ingester import Ingester
from fleet.ingest.routes import Route
from fleet.leader import LeaderElector
from fleet.provision import unreachable
from fleet.registry import Registry
from fleet.remote_logs import LogCollector
from fleet.rollouts.controller import RolloutController
from fleet.storage import create_engine_for_url
from fleet.storage.retention import apply_retention
from fleet.summary import SummaryPublisher
from fleet.tls import check_server_files
from fleet.uploads import clean_incoming
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


def exposed(config: FleetConfig) -> bool:
    """Whether other machines reach this fleet (then a loopback default in an agent config is wrong)."""
    public = urlsplit(config.public_url).hostname if config.public_url else None
    return not unreachable(config.host) or (public is not None and not unreachable(public))


def password_file(config: FleetConfig) -> PasswordFile | None:
    if config.broker_password_file is None:
        return None
    kept = PasswordFile(config.broker_password_file, config.broker_pid_file, config.broker_reload_command)
    kept.check()
    return kept


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
        tokens = load_tokens(config.tokens_file) if config.tokens_file else []
        if not tokens:
            log.warning("no operator tokens configured (--tokens): the operator API is open to anyone")
        self.engine: Engine = create_engine_for_url(config.db_url)
        registry = Registry(self.engine, config.artifacts, trusted)
        clean_incoming(config.artifacts)  # uploads a killed fleet left half-written
        self.ingester = Ingester(config.mqtt, self.engine, dead_letter_cap=config.dead_letter_cap)
        topics = Topics(config.mqtt.topic_prefix)
        self.logs = LogCollector(self.engine, topics)  # device log answers, on every worker
        self.ingester.add_route(Route(topics.all_logs, self.logs.on_message))
        self.rollouts = RolloutController(self.engine, self.ingester, topics)
        self.alerts = AlertEngine(
            self.engine, self.ingester, alerts_topic(topics), config.alerts, clock=lambda: datetime.now(UTC)
        )
        self.summary = SummaryPublisher(self.engine, self.ingester, topics, config.homeassistant_discovery)
        self.context = FleetContext(
            engine=self.engine,
            registry=registry,
            link=self.ingester,
            topics=topics,
            max_bundle_bytes=config.max_bundle_bytes,
            base_url=config.base_url(),
            tokens=tokens,
            rollouts=self.rollouts,
            mqtt_host=config.mqtt.host,
            mqtt_port=config.mqtt.port,
            exposed=exposed(config),
            password_file=password_file(config),
            metrics=config.metrics,
        )
        self.leader = LeaderElector(self.engine, lease_s=config.leader_lease_s, renew_s=config.leader_renew_s)
        self._maintenance_stop = threading.Event()
        self._campaign = threading.Thread(
            target=self.leader.run, args=(self._maintenance_stop,), name="fleet-leader", daemon=True
        )
        self._maintenance = threading.Thread(target=self._maintain, name="fleet-maintenance", daemon=True)
        self.app = create_app(self.context)
        self.app.state.leader = self.leader  # GET /api/v1/cluster names this worker
        self.listening = threading.Event()
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            check_server_files(config.tls_cert_file, config.tls_key_file)  # names a bad file
        self._uvicorn = _Server(
            uvicorn.Config(
                self.app,
                host=config.host,
                port=config.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
                ssl_certfile=config.tls_cert_file,
                ssl_keyfile=config.tls_key_file,
            ),
            self.listening,
        )
        self._watch = threading.Thread(target=self._announce, name="fleet-announce", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{self.config.scheme}://{host}:{self.port}"

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

    def _maintain(self) -> None:
        """On the elected worker only: judge rollouts every ``rollout_tick_s``, evaluate alerts and
        publish the summary every ``summary_interval_s``, apply retention every ``retention_interval_s``
        (two workers judging one rollout would promote or roll it back twice)."""
        next_retention = time.monotonic()
        next_summary = time.monotonic()
        while not self._maintenance_stop.wait(self.config.rollout_tick_s):
            fence = self.leader.fence()  # this round's writes are refused once the lease moved on
            if fence is None:
                continue
            try:
                self.rollouts.tick(fence)
                if time.monotonic() >= next_summary:
                    next_summary = time.monotonic() + self.config.summary_interval_s
                    self.alerts.evaluate(fence)
                    self.summary.publish()
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + self.config.retention_interval_s
                    result = apply_retention(
                        self.engine,
                        datetime.now(UTC),
                        self.config.raw_retention_days,
                        self.config.hourly_retention_days,
                        dead_letter_days=self.config.dead_letter_days,
                        dead_letter_cap=self.config.dead_letter_cap,
                        fence=fence,
                    )
                    if result.windows_rolled_up or result.hourly_rows_expired or result.dead_letters_expired:
                        log.info("retention: %s", result)
            except StaleLeaderError as exc:
                log.warning("maintenance stopped: %s", exc)
            except Exception:
                log.exception("maintenance failed; trying again")

    def run(self) -> None:
        """Start the ingester, serve HTTP until told to stop, then stop the ingester and the database."""
        self.ingester.start()
        self._watch.start()
        self._campaign.start()
        self._maintenance.start()
        try:
            self._uvicorn.run()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            raise FleetError(
                f"cannot listen on {self.config.host}:{self.config.port} (see the log above)"
            ) from exc
        finally:
            self.listening.set()
            log.info("fleet stopping")
            self._maintenance_stop.set()
            self._maintenance.join(10)
            self._campaign.join(10)  # releases the lease: a follower takes over at once
            self.ingester.stop()
            self.engine.dispose()
        log.info("fleet stopped")

    def stop(self) -> None:
        self._uvicorn.should_exit = True


def freeze_startup_heap() -> None:
    """Move what start-up built (modules, the app, SQLAlchemy's tables and compiled statements)
    out of the cyclic garbage collector's reach: a full collection walked all of it, and at
    10,000 devices one landed on about every 60th device-list request as a 90 ms pause (the
    list's p99). Garbage is collected first, so none of it is kept for good."""
    gc.collect()
    gc.freeze()


def serve(config: FleetConfig) -> int:
    """Run in the main thread: SIGTERM and SIGINT stop the server cleanly and exit 0."""
    server = FleetServer(config)
    stopped: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal first, then re-raises it to this handler after shutting down.
        stopped.append(signum)
        server.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Here, in the process's own entry, not in FleetServer.run: a test process starting many
    # servers would freeze each test's leftovers for good.
    freeze_startup_heap()
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
