"""The fleet server's configuration: one strict model, built once by ``fleet serve``."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.alerts import AlertRules
from fleet.errors import FleetError
from fleet.storage.ingest import DEAD_LETTER_CAP, DEAD_LETTER_DAYS
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
        "",
        description="stable MQTT client id: the broker keeps this client's session across restarts "
        "(default: edgefleet-fleet- and a digest of the broker login, or the host name without one)",
    )
    session_expiry_s: int = Field(86400, ge=0, description="how long the broker keeps the session while away")
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive")
    reconnect_min_s: int = Field(1, ge=1, description="first reconnect delay; doubles up to the maximum")
    reconnect_max_s: int = Field(30, ge=1, description="longest reconnect delay")
    max_payload_bytes: int = Field(
        MAX_MQTT_PAYLOAD_BYTES, ge=1, description="larger payloads are dead-lettered"
    )
    batch_size: int = Field(
        500,
        ge=1,
        description="most messages stored in one transaction (half the 1,000 unacknowledged messages "
        "the broker may send: it goes on sending while a batch is written)",
    )
    manual_ack: bool = Field(True, description="acknowledge QoS 1 messages only after they are committed")
    writer: Literal["auto", "process", "thread"] = Field(
        "auto",
        description="where messages are decoded and stored: a child process beside the MQTT one (off its "
        "interpreter lock, on another core), or a thread in it; auto: a process when the database is a "
        "SQLite file or PostgreSQL and there are two cores or more",
    )
    username: str | None = Field(None, description="broker user name (the ACL's fleet user)")
    password: str | None = Field(None, repr=False, description="broker password")
    ca_file: Path | None = Field(
        None, description="connect over TLS, verifying the broker against this PEM CA (host name checked)"
    )
    cert_file: Path | None = Field(None, description="the fleet's TLS client certificate, with key_file")
    key_file: Path | None = Field(None, description="the unencrypted PEM key of cert_file")

    @model_validator(mode="before")
    @classmethod
    def _default_client_id(cls, data: Any) -> Any:
        """A stable id nobody can guess without the fleet's broker password; the host name on an
        open development broker (where any client may take any id anyway)."""
        if isinstance(data, dict) and not data.get("client_id"):
            password = data.get("password")
            if password:
                login = f"{data.get('username') or ''}:{password}".encode()
                suffix = hashlib.sha256(b"edgefleet client id\0" + login).hexdigest()[:16]
            else:
                suffix = socket.gethostname()
            data = {**data, "client_id": f"edgefleet-fleet-{suffix}"[:64]}
        return data

    shared_group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="subscribe as $share/<group>/... so several ingest workers split the stream "
        "(each worker needs its own client id)",
    )


PER_DEVICE_SERIES_LIMIT = 10_000
"""Hard ceiling of ``metrics.per_device_max``: beyond it per-device series belong in the API, not in
Prometheus (each device adds two series to every scrape)."""


class MetricsSettings(BaseModel):
    """What ``GET /metrics`` exposes beyond the fleet-wide series."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_device: bool = Field(
        False, description="also export each device's last-seen time and presence (two series a device)"
    )
    per_device_max: int = Field(
        1000,
        ge=1,
        le=PER_DEVICE_SERIES_LIMIT,
        description="export per-device series for at most this many devices, the most recently seen; "
        "the rest are counted in edgefleet_metrics_devices_omitted",
    )
    stale_after_s: float = Field(
        900, gt=0, description="a device's newest window counts in the error and drift gauges this long"
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
    dead_letter_days: float = Field(
        DEAD_LETTER_DAYS, gt=0, description="keep dead letters this long (removed by the retention run)"
    )
    dead_letter_cap: int = Field(
        DEAD_LETTER_CAP,
        ge=1,
        description="keep at most this many dead letters, the newest: enforced as each batch is stored",
    )
    alerts: AlertRules = Field(default_factory=AlertRules, description="alert rules")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Prometheus /metrics")
    summary_interval_s: float = Field(10, gt=0, description="how often alerts and summary topics refresh")
    leader_lease_s: float = Field(
        15,
        gt=0,
        description="workers on one database elect a leader for rollouts, alerts, summary and retention: "
        "its lease lasts this long, so a follower takes over at most this long (plus leader_renew_s) "
        "after the leader's last renewal",
    )
    leader_renew_s: float = Field(
        5, gt=0, description="how often the leader renews its lease (and followers try to take it)"
    )
    homeassistant_discovery: bool = Field(False, description="publish Home Assistant MQTT discovery configs")
    tls_cert_file: Path | None = Field(
        None, description="serve HTTPS with this PEM certificate (chain); with tls_key_file"
    )
    tls_key_file: Path | None = Field(None, description="the unencrypted PEM private key of tls_cert_file")
    broker_password_file: Path | None = Field(
        None,
        description="Mosquitto's password_file, kept by the fleet: device add, rotate-secret, revoke and "
        "delete rewrite it atomically and reload Mosquitto (else they print what to apply)",
    )
    broker_pid_file: Path | None = Field(
        None, description="Mosquitto's pid_file: reload it with SIGHUP (or broker_reload_command)"
    )
    broker_reload_command: str | None = Field(
        None, description="a command that reloads Mosquitto, e.g. 'sudo systemctl reload mosquitto'"
    )

    @model_validator(mode="after")
    def _lease_margin(self) -> FleetConfig:
        if 2 * self.leader_renew_s >= self.leader_lease_s:
            raise ValueError(
                f"leader_lease_s ({self.leader_lease_s}) must be more than twice leader_renew_s "
                f"({self.leader_renew_s}): the leader steps back one renew interval before its lease ends"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> FleetConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        reloads = (self.broker_pid_file is not None) + (self.broker_reload_command is not None)
        if (self.broker_password_file is None and reloads) or (self.broker_password_file and reloads != 1):
            raise ValueError(
                "broker_password_file needs exactly one of broker_pid_file and broker_reload_command "
                "(and they mean nothing without it)"
            )
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file is not None else "http"

    def base_url(self, port: int | None = None) -> str:
        """``public_url`` when given, else ``http(s)://HOST:PORT`` of the listener."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{port if port is not None else self.port}"


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise FleetError(f"--listen {value!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise FleetError(f"cannot read {path}: {exc.strerror or exc}") from exc
