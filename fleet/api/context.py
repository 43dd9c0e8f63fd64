"""What the routers need, handed to the app once (no globals, nothing read at import time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Request
from sqlalchemy import Engine

from fleet.auth import OperatorToken
from fleet.broker_files import PasswordFile
from fleet.config import MetricsSettings
from fleet.deploy import Publisher
from fleet.provision import Endpoints
from fleet.registry import Registry
from fleet.rollouts.controller import RolloutController
from fleet.views import IngestStats
from protocol.topics import Topics


class IngestLink(Publisher, Protocol):
    """The MQTT side as the API sees it: publish commands, report counters."""

    def stats(self) -> IngestStats: ...


@dataclass
class FleetContext:
    engine: Engine
    registry: Registry
    link: IngestLink
    topics: Topics
    max_bundle_bytes: int
    base_url: str = field(default="")
    """Base of the bundle URLs in desired states; set once the listener's port is known."""
    tokens: list[OperatorToken] = field(default_factory=list)
    """Operator tokens; empty means the API is open (development only)."""
    rollouts: RolloutController | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    """Where the fleet reaches the broker (the default of the agent config ``device add`` prints)."""
    exposed: bool = False
    """The fleet is reached from other machines: a loopback default in an agent config is refused."""
    password_file: PasswordFile | None = None
    """The broker's password file, when the fleet keeps it (else identity changes say what to apply)."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    """What ``/metrics`` exports beyond the fleet-wide series."""

    def endpoints(self) -> Endpoints:
        return Endpoints(self.base_url, self.mqtt_host, self.mqtt_port, self.exposed)

    def controller(self) -> RolloutController:
        if self.rollouts is None:
            self.rollouts = RolloutController(self.engine, self.link, self.topics)
        return self.rollouts


def get_context(request: Request) -> FleetContext:
    context: FleetContext = request.app.state.fleet
    return context
