"""The agent process's side of remote logs and configuration, wired into ``agent.app`` in one place."""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.config import AgentConfig
from agent.log_answer import LogResponder, Publish
from agent.logfile import install, remove
from agent.remote_config import RemoteConfigs
from protocol.messages import Command, CommandKind
from protocol.remote import RemoteConfig
from protocol.topics import Topics

log = logging.getLogger(__name__)


class RemoteSide:
    def __init__(
        self, config: AgentConfig, topics: Topics, current: Callable[[], AgentConfig], publish: Publish
    ) -> None:
        """``current``: the config in effect at the time of asking (it changes under us)."""
        self.configs = RemoteConfigs(config.state_dir)
        self._log_file: logging.Handler | None = None
        self.logs = LogResponder(
            config.device_id,
            topics,
            config.state_dir / "log",
            publish,
            enabled=lambda: current().remote.logs,
            max_bytes=lambda: current().remote.max_log_bytes,
            secrets=lambda: [s for s in (current().mqtt.password, current().fleet.password) if s],
        )

    def start(self, config: AgentConfig) -> None:
        self._log_file = install(config.state_dir, config.log)

    def stop(self) -> None:
        remove(self._log_file)
        self._log_file = None

    def on_command(self, command: Command) -> None:
        """A command other than check-update (paho's network thread: must not block)."""
        if command.command == CommandKind.LOGS and command.logs is not None:
            self.logs.request(command.logs)

    def judge(
        self, local: AgentConfig, remote: RemoteConfig | None, apply: Callable[[AgentConfig], list[str]]
    ) -> bool:
        """Judge the desired state's config and apply it when accepted (never raises); whether the
        report changed (then the status should be published again)."""
        before = self.configs.report
        try:
            config = self.configs.offer(local, remote)
            if config is not None:
                ignored = apply(config)
                if ignored:  # REMOTE_KEYS are all live: this would be a bug, not an operator error
                    log.warning("remote config: not applied until a restart: %s", ", ".join(ignored))
        except Exception:
            log.exception("could not apply the remote config; keeping the running one")
        return self.configs.report != before
