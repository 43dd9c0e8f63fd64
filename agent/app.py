"""The agent process: components started in order and stopped in reverse.

store -> serving model -> inference API -> MQTT -> scheduler (update checks, telemetry) -> READY.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from types import FrameType

import requests

from agent.config import AgentConfig
from agent.http_api import InferenceAPI
from agent.mqtt_link import MqttLink
from agent.runtime import resolve_runtime
from agent.serving import ModelHolder
from agent.store import ModelStore
from agent.systemd import Notifier
from agent.telemetry import RequestMetrics, Telemetry
from agent.update import Updater
from agent.update.machine import State
from edgefleet import __version__
from protocol.messages import UpdateEvent
from protocol.schema import ModelRef
from protocol.signing import TrustedKeys
from protocol.topics import Topics

log = logging.getLogger(__name__)

_STATUS_STATES = {State.ACTIVATE.value, State.ROLLBACK.value, State.FAILED.value, State.COMMIT.value}


class Agent:
    def __init__(self, config: AgentConfig, session: requests.Session | None = None) -> None:
        self.config = config
        self.session = session
        self.holder = ModelHolder()
        self.metrics = RequestMetrics()
        self.store = ModelStore(config.state_dir)
        self.topics = Topics(config.mqtt.topic_prefix)
        self.runtime_name: str | None = None
        self.updater: Updater | None = None
        self.api: InferenceAPI | None = None
        self.mqtt: MqttLink | None = None
        self.telemetry: Telemetry | None = None
        self._scheduler: object | None = None

    # -- status --------------------------------------------------------------------------------
    def model_ref(self) -> ModelRef | None:
        model = self.holder.current
        return model.ref if model is not None else None

    def update_state(self) -> str:
        return self.updater.state if self.updater is not None else State.IDLE.value

    def describe(self) -> str:
        model = self.holder.current
        what = f"model {model.manifest.name} {model.manifest.version}" if model else "no model yet"
        api = self.api.url if self.api else "(not listening)"
        return f"agent {self.config.device_id} serving on {api} ({what})"

    def _on_event(self, event: UpdateEvent) -> None:
        log.info(
            "update %s: %s %s%s",
            event.state,
            event.target.name,
            event.target.version,
            f" ({event.reason})" if event.reason else "",
        )
        if self.mqtt is not None:
            self.mqtt.publish_event(event)
            if event.state in _STATUS_STATES:
                self.mqtt.publish_status()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Agent:
        from apscheduler.schedulers.background import BackgroundScheduler

        cfg = self.config
        self.store.open()
        self.runtime_name = str(resolve_runtime(cfg.runtime.kind))
        trusted = TrustedKeys.from_paths(cfg.trusted_keys)
        if len(trusted) == 0:
            log.warning(
                "no trusted keys in %s: every bundle will be refused", ", ".join(map(str, cfg.trusted_keys))
            )
        session = self.session or requests.Session()
        session.headers.setdefault("User-Agent", f"edgefleet-agent/{__version__}")
        self.mqtt = MqttLink(
            cfg.device_id,
            cfg.mqtt.host,
            cfg.mqtt.port,
            self.topics,
            agent_version=__version__,
            status=lambda: (self.runtime_name, self.model_ref(), self.update_state()),
            on_check_update=self.request_check,
            keepalive_s=cfg.mqtt.keepalive_s,
            username=cfg.mqtt.username,
            password=cfg.mqtt.password,
            queue_limit=cfg.mqtt.queue_limit,
        )
        self.updater = Updater(
            cfg.device_id,
            self.store,
            self.holder,
            trusted=trusted,
            session=session,
            fleet_url=cfg.fleet.url,
            runtime=cfg.runtime.kind,
            threads=cfg.runtime.threads,
            timeout_s=cfg.fleet.timeout_s,
            max_state_restarts=cfg.update.max_state_restarts,
            emit=self._on_event,
        )
        # A crash after the switch is settled here, before anything serves.
        self.updater.resume(local_only=True)
        if self.holder.current is None:
            self.holder.swap(self.updater.load_serving(self.store.read_pointer()))
        self.api = InferenceAPI(
            cfg.api.host,
            cfg.api.port,
            self.holder,
            self.metrics,
            max_body_bytes=cfg.api.max_body_bytes,
            update_state=self.update_state,
        ).start()
        self.mqtt.start()
        self.telemetry = Telemetry(
            cfg.device_id,
            self.topics,
            self.mqtt,
            metrics=self.metrics,
            state_dir=cfg.state_dir,
            model_ref=self.model_ref,
            dropped=self.mqtt.take_dropped,
        )
        scheduler = BackgroundScheduler(timezone=UTC)
        scheduler.add_job(
            self.updater.check,
            "interval",
            seconds=cfg.fleet.poll_interval_s,
            id="update-check",
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_job(
            self._publish_telemetry,
            "interval",
            seconds=cfg.telemetry.interval_s,
            id="telemetry",
            max_instances=1,
            coalesce=True,
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("%s", self.describe())
        return self

    def _publish_telemetry(self) -> None:
        if self.telemetry is not None:
            self.telemetry.publish_window()

    def request_check(self) -> None:
        """Check for an update now, off the caller's thread (paho's network thread, usually)."""
        scheduler = self._scheduler
        if scheduler is not None and self.updater is not None:
            scheduler.add_job(self.updater.check, id="check-now", replace_existing=True)  # type: ignore[attr-defined]

    def stop(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)  # type: ignore[attr-defined]
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.api is not None:
            self.api.stop()
        log.info("agent %s stopped", self.config.device_id)


def run(config: AgentConfig, notifier: Notifier | None = None) -> int:
    """Run until SIGTERM or SIGINT; keep the systemd watchdog fed from this (main) thread."""
    notifier = notifier or Notifier()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    agent = Agent(config)
    try:
        agent.start()
        notifier.ready(agent.describe())
        interval = notifier.watchdog_s
        if interval is not None:
            notifier.watchdog()
        while not stop.wait(interval if interval is not None else 3600.0):
            if interval is not None:
                notifier.watchdog()
        notifier.stopping()
    finally:
        agent.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
