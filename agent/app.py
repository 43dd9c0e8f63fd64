"""The agent process: components started in order and stopped in reverse.

store -> serving model -> inference API -> MQTT -> scheduler (update checks, telemetry) -> READY.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from agent.capture import Capture
from agent.capture_sender import CaptureSender
from agent.capture_setup import LIVE_KEYS, build_capture
from agent.config import AgentConfig
from agent.errors import AgentError
from agent.http_api import InferenceAPI
from agent.http_limits import HttpLimits
from agent.logfile import apply_level
from agent.metrics_text import MetricsSources
from agent.mqtt_link import MqttLink
from agent.outbox import Outbox
from agent.remote_side import RemoteSide
from agent.scheduler import IntervalJob
from agent.serving import ModelHolder
from agent.store import ModelStore, parse_manifest
from agent.systemd import Notifier
from agent.telemetry import RequestMetrics, Telemetry
from agent.tls import mqtt_context
from agent.update import UpdatePolicy, Updater, build_updater
from agent.update.faults import Faults
from agent.update.machine import State
from protocol.bundle import MANIFEST
from protocol.capture import CapturePolicy
from protocol.manifest import BaselineStats
from protocol.messages import DesiredState, UpdateEvent
from protocol.schema import ModelRef
from protocol.topics import Topics
from protocol.version import __version__
from runtime import resolve_runtime

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

_STATUS_STATES = frozenset({State.ACTIVATE, State.ROLLBACK, State.FAILED, State.COMMIT})
"""Update states that change (or confirm) the serving model: the retained status follows them."""


class Agent:
    def __init__(self, config: AgentConfig, session: requests.Session | None = None) -> None:
        """``session``: run the update steps in this process on it (tests); by default they run in
        a worker process."""
        self.config = config
        self.local_config = config
        """agent.toml as read; ``config`` is it with the accepted remote config over it."""
        self.session = session
        self.holder = ModelHolder()
        self.metrics = RequestMetrics()
        self.store = ModelStore(config.state_dir)
        self.topics = Topics(config.mqtt.topic_prefix)
        self.remote = RemoteSide(config, self.topics, lambda: self.config, self._mqtt_publish)
        self.runtime_name: str | None = None
        self.updater: Updater | None = None
        self.api: InferenceAPI | None = None
        self.mqtt: MqttLink | None = None
        self.telemetry: Telemetry | None = None
        self.capture: Capture | None = None
        self._capture_sender: CaptureSender | None = None
        self._check_job: IntervalJob | None = None
        self._telemetry_job: IntervalJob | None = None
        self.stopping = threading.Event()

    # -- status --------------------------------------------------------------------------------
    def model_ref(self) -> ModelRef | None:
        model = self.holder.current
        return model.ref if model is not None else None

    def update_state(self) -> State:
        return self.updater.state if self.updater is not None else State.IDLE

    def status_line(self) -> str:
        """systemd STATUS=: what serves and where the update machine is."""
        model = self.holder.current
        what = f"{model.manifest.name} {model.manifest.version}" if model else "no model"
        queued = self.mqtt.queued if self.mqtt is not None else 0
        return f"serving {what}; update {self.update_state()}; outbox {queued}"

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
        self.store.open()
        self.config = cfg = self.remote.configs.effective(self.local_config)
        self.remote.start(cfg)
        self.runtime_name = str(resolve_runtime(cfg.runtime.kind))
        if not _any_public_key(cfg.trusted_keys):
            log.warning(
                "no trusted keys in %s: every bundle will be refused", ", ".join(map(str, cfg.trusted_keys))
            )
        user_agent = f"edgefleet-agent/{__version__}"
        self.mqtt = MqttLink(
            cfg.device_id,
            cfg.mqtt.host,
            cfg.mqtt.port,
            self.topics,
            agent_version=__version__,
            status=lambda: (self.runtime_name, self.model_ref(), self.update_state()),
            on_check_update=self.request_check,
            on_command=self.remote.on_command,
            config_report=lambda: self.remote.configs.report,
            keepalive_s=cfg.mqtt.keepalive_s,
            outbox=Outbox(cfg.state_dir / "outbox.sqlite", limit=cfg.mqtt.queue_limit),
            username=cfg.mqtt.username,
            password=cfg.mqtt.password,
            tls=mqtt_context(cfg.mqtt.tls),  # TlsFileError names a missing or unusable file
        )
        self.updater = build_updater(
            cfg,
            self.store,
            self.holder,
            user_agent=user_agent,
            stopping=self.stopping,
            usage=self.metrics.usage,
            emit=self._on_event,
            session=self.session,  # None: each heavy step in a worker process
            faults=Faults.from_environ(os.environ),
        )
        self.capture, self._capture_sender = build_capture(cfg, user_agent)
        self.updater.on_desired = self._on_desired
        # A crash after the switch is settled here, before anything serves.
        self.updater.start_up()
        self.capture.start()
        api = InferenceAPI(
            cfg.api.host,
            cfg.api.port,
            self.holder,
            self.metrics,
            max_body_bytes=cfg.api.max_body_bytes,
            max_instances=cfg.api.max_instances,
            update_state=self.update_state,
            unix_socket=cfg.api.unix_socket,
            limits=HttpLimits.from_config(cfg.api),
        )
        if cfg.api.metrics:
            api.metrics_page = self._metrics_sources().page
        api.capture = self.capture
        self.api = api.start()
        self.mqtt.start()
        self.telemetry = Telemetry(
            cfg.device_id,
            self.topics,
            self.mqtt,
            metrics=self.metrics,
            state_dir=cfg.state_dir,
            model_ref=self.model_ref,
            dropped=self.mqtt.take_dropped,
            baseline=self._baseline,
        )
        # An update check at once, then every poll interval; a telemetry window every interval.
        self._check_job = IntervalJob(
            "update-check", cfg.fleet.poll_interval_s, self.updater.check, run_at_start=True
        ).start()
        self._telemetry_job = IntervalJob(
            "telemetry", cfg.telemetry.interval_s, self._publish_telemetry
        ).start()
        log.info("%s", self.describe())
        return self

    def _metrics_sources(self) -> MetricsSources:
        known: dict[str, ModelRef] = {}  # a model's name never changes: read each once

        def model_ref(sha: str) -> ModelRef | None:
            if sha not in known:
                model = self.holder.current
                if model is not None and model.sha256 == sha:
                    known[sha] = model.ref
                else:  # served earlier in this process; a pruned one is named by its sha256
                    try:
                        manifest = parse_manifest((self.store.model_dir(sha) / MANIFEST).read_bytes())
                    except (AgentError, OSError):
                        return None
                    known[sha] = ModelRef(name=manifest.name, version=manifest.version, sha256=sha)
            return known[sha]

        mqtt = self.mqtt
        return MetricsSources(
            self.metrics,
            __version__,
            model_ref,
            self.update_state,
            outbox_queued=(lambda: mqtt.queued) if mqtt is not None else None,
        )

    def _baseline(self) -> BaselineStats | None:
        model = self.holder.current
        return model.manifest.baseline if model is not None else None

    # -- remote logs and configuration ---------------------------------------------------------
    def _mqtt_publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self.mqtt is not None:
            self.mqtt.publish(topic, payload, qos, retain)

    def _on_desired(self, desired: DesiredState) -> None:
        """The update check read the desired state: judge its config section, follow its capture policy."""
        self._capture_follow(desired.capture)
        if self.remote.judge(self.local_config, desired.config, self._apply) and self.mqtt is not None:
            self.mqtt.publish_status()

    def reload(self, config: AgentConfig) -> list[str]:
        """A changed agent.toml (SIGHUP), with the accepted remote config over it again."""
        self.local_config = config
        effective = self.remote.configs.effective(config)
        ignored = self._apply(effective)
        if self.mqtt is not None:
            self.mqtt.publish_status()
        return ignored

    def _apply(self, config: AgentConfig) -> list[str]:
        """Apply a changed config: intervals, the update policy and the log level now; the rest
        needs a restart. Returns what was not applied, in words."""
        old, self.config = self.config, config
        apply_level(config.log.level)
        if self._check_job is not None and config.fleet.poll_interval_s != old.fleet.poll_interval_s:
            self._check_job.set_interval(config.fleet.poll_interval_s)
        if self._telemetry_job is not None and config.telemetry.interval_s != old.telemetry.interval_s:
            self._telemetry_job.set_interval(config.telemetry.interval_s)
        if self.updater is not None:
            self.updater.reload(UpdatePolicy.from_config(config.update))
        if self.capture is not None:
            self.capture.reload(config.capture)
        live = {
            "fleet": {"poll_interval_s"},
            "telemetry": {"interval_s"},
            "update": None,
            "log": {"level"},
            "remote": None,
            "capture": LIVE_KEYS,
        }
        ignored = []
        for section, value in config.model_dump().items():
            before = old.model_dump()[section]
            if value == before or (section in live and live[section] is None):
                continue
            if isinstance(value, dict):
                keys = live.get(section) or set()
                ignored += [f"{section}.{k}" for k in value if value[k] != before[k] and k not in keys]
            else:
                ignored.append(section)
        return ignored

    def _publish_telemetry(self) -> None:
        if self.telemetry is not None:
            window = self.telemetry.publish_window()
            if self.capture is not None:
                self.capture.observe_drift(window.prediction.drift_psi if window.prediction else None)

    def _capture_follow(self, policy: CapturePolicy | None) -> None:
        if self.capture is not None:
            self.capture.apply_remote(policy)

    def request_check(self) -> None:
        """Check for an update now, off the caller's thread (paho's network thread, usually)."""
        if self._check_job is not None:
            self._check_job.trigger()

    def stop(self, flush_s: float = 10.0) -> None:
        """Reverse order: stop updates (an update in progress stays saved for the next start),
        finish requests in flight, publish a last telemetry window, flush the outbox, go offline."""
        self.stopping.set()
        for job in (self._check_job, self._telemetry_job):
            if job is not None:
                job.stop(timeout_s=1.0)  # an update in progress stops at its next wait
        if self.api is not None:
            self.api.stop()
        if self.capture is not None:  # what the last requests queued goes to disk
            self.capture.stop()
        if self._capture_sender is not None:
            self._capture_sender.stop()
        if self.telemetry is not None and self.mqtt is not None:
            try:
                self.telemetry.publish_window()
            except Exception:
                log.exception("could not write the last telemetry window")
        if self.mqtt is not None:
            left = self.mqtt.queued
            self.mqtt.stop(flush_s)
            if left:
                log.info("outbox: %d message(s) at stop were kept for the next start if unsent", left)
        log.info("agent %s stopped", self.config.device_id)
        self.remote.stop()


def _any_public_key(paths: list[Path]) -> bool:
    """Whether any *.pub is there (parsed by the worker that verifies: cryptography stays out)."""
    return any(path.is_file() or (path.is_dir() and any(path.glob("*.pub"))) for path in paths)


def run(
    config: AgentConfig,
    notifier: Notifier | None = None,
    reload: Callable[[], AgentConfig] | None = None,
) -> int:
    """Run until SIGTERM or SIGINT; keep the systemd watchdog fed from this (main) thread.

    READY=1 is sent once the model (if one is stored) is loaded and the API listens; STATUS=
    follows the serving model and the update state; SIGHUP re-reads the config (``reload``).
    """
    notifier = notifier or Notifier()
    stop = threading.Event()
    hup = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            hup.set()
            return
        stop.set()

    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    agent = Agent(config)
    try:
        agent.start()
        status = agent.describe()
        notifier.ready(status)
        interval = notifier.watchdog_s
        if interval is not None:
            notifier.watchdog()
        tick = min(interval if interval is not None else 5.0, 5.0)
        while not stop.wait(tick):
            # The main loop: a wedged loop stops the pings and systemd restarts the agent.
            if interval is not None:
                notifier.watchdog()
            if hup.is_set():
                hup.clear()
                _reload(agent, reload)
            now = agent.status_line()
            if now != status:
                status = now
                notifier.status(status)
        log.info("received a stop signal; draining requests and flushing the outbox")
        notifier.stopping()
    finally:
        agent.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _reload(agent: Agent, reload: Callable[[], AgentConfig] | None) -> None:
    if reload is None:
        log.warning("SIGHUP: this agent was not started from a file; nothing to reload")
        return
    try:
        config = reload()
    except AgentError as exc:
        log.error("SIGHUP: keeping the running config: %s", exc)
        return
    ignored = agent.reload(config)
    log.info(
        "SIGHUP: config reloaded%s",
        f"; these need a restart to apply: {', '.join(ignored)}" if ignored else "",
    )
