"""The fleet server's configuration: one strict model, built once by ``fleet serve``."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fleet.alerts import AlertRules
from protocol.bundle import DEFAULT_MAX_BUNDLE_BYTES
from protocol.topics import DEFAULT_PREFIX

DEFAULT_DB_URL = "sqlite:///./fleet.db"
MAX_MQTT_PAYLOAD_BYTES = 256 * 1024


class MqttSettings(BaseModel):
    """How the ingester reaches the broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker TCP port")
    topic_prefix: str = Field(DEFAULT_PREFIX, description="prefix of every edgefleet topic")
    client_id: str = Field(
        default_factory=lambda: f"edgefleet-fleet-{socket.gethostname()}"[:64],
        description="stable MQTT client id: the broker keeps this client's session across restarts",
    )
    session_expiry_s: int = Field(86400, ge=0, description="how long the broker keeps the session while away")
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive")
    reconnect_min_s: int = Field(1, ge=1, description="first reconnect delay; doubles up to the maximum")
    reconnect_max_s: int = Field(30, ge=1, description="longest reconnect delay")
    max_payload_bytes: int = Field(
        MAX_MQTT_PAYLOAD_BYTES, ge=1, description="larger payloads are dead-lettered"
    )
    batch_size: int = Field(200, ge=1, description="most messages stored in one transaction")
    manual_ack: bool = Field(True, description="acknowledge QoS 1 messages only after they are committed")
    username: str | None = Field(None, description="broker user name (the ACL's fleet user)")
    password: str | None = Field(None, repr=False, description="broker password")
    shared_group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="subscribe as $share/<group>/... so several ingest workers split the stream "
        "(each worker needs its own client id)",
    )


class FleetConfig(BaseModel):
    """Everything ``edgefleet fleet serve`` needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db_url: str = Field(DEFAULT_DB_URL, description="SQLAlchemy database URL")
    host: str = Field("127.0.0.1", description="HTTP listen address")
    port: int = Field(8080, ge=0, le=65535, description="HTTP listen port; 0 picks a free one")
    public_url: str | None = Field(None, description="base of bundle URLs handed to devices")
    trusted_keys: list[Path] = Field(
        description="public keys (files or directories of *.pub) bundles must be signed by"
    )
    artifacts: Path = Field(Path("./artifacts"), description="where uploaded bundles are stored")
    max_bundle_bytes: int = Field(DEFAULT_MAX_BUNDLE_BYTES, ge=1, description="upload size limit")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    tokens_file: Path | None = Field(
        None, description="operator tokens, lines of 'ROLE NAME TOKEN'; without it the API is open"
    )
    rollout_tick_s: float = Field(5.0, gt=0, description="how often running rollouts are judged")
    raw_retention_days: float = Field(14, gt=0, description="keep raw telemetry windows this long")
    hourly_retention_days: float = Field(400, gt=0, description="keep hourly rollups this long")
    retention_interval_s: float = Field(3600, gt=0, description="how often retention runs")
    alerts: AlertRules = Field(default_factory=AlertRules, description="alert rules")
    summary_interval_s: float = Field(10, gt=0, description="how often alerts and summary topics refresh")
    homeassistant_discovery: bool = Field(False, description="publish Home Assistant MQTT discovery configs")

    def base_url(self, port: int | None = None) -> str:
        """``public_url`` when given, else ``http://HOST:PORT`` of the listener."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port if port is not None else self.port}"
