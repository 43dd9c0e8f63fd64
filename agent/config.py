"""The agent's configuration: one TOML file, strict pydantic models, loaded in one place.

Every field carries a description; ``agent.config_reference`` renders them for docs/agent.md and
``edgefleet agent check-config`` reports problems as ``field.path: message``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic.fields import FieldInfo

from agent.capture_config import CaptureConfig
from agent.config_env import env_overrides, merge
from agent.config_sections import LogConfig, RemoteAccessConfig
from agent.credentials import PASSWORD_FILE_HELP, password_from_file
from agent.errors import ConfigError
from protocol.schema import DEVICE_ID_PATTERN
from protocol.validation import error_location


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetConfig(_Section):
    url: str = Field(
        pattern=r"^https?://[^\s/]+",
        description="Base URL of the fleet service; desired state is read from "
        "{url}/api/v1/devices/{device_id}/desired and relative bundle URLs resolve against it.",
    )
    poll_interval_s: float = Field(
        default=300, gt=0, description="Seconds between desired-state checks (one also runs at start-up)."
    )
    timeout_s: float = Field(
        default=30,
        gt=0,
        description="Connect and read timeout of each HTTP request to the fleet, in seconds.",
    )
    username: str | None = Field(
        default=None,
        description="Device name for the fleet API's HTTP Basic auth (the device id from "
        "`edgefleet device add`); unset: the [mqtt] username.",
    )
    password: str | None = Field(
        default=None,
        description="Device secret for the fleet API's HTTP Basic auth; unset: the [mqtt] password. "
        "Sent only to the fleet's own origin, never to a bundle URL on another host, never after a "
        "redirect to another origin.",
    )
    password_file: Path | None = Field(default=None, description=PASSWORD_FILE_HELP)
    ca_file: Path | None = Field(
        default=None,
        description="For an https:// url: PEM CA certificate(s) the fleet's certificate (and that of "
        "any bundle host) must chain to; unset: the system's CA store. The host name is always checked.",
    )

    @model_validator(mode="before")
    @classmethod
    def resolve_password_file(cls, data: Any, info: ValidationInfo) -> Any:
        return password_from_file(data, info)


class MqttTlsConfig(_Section):
    enabled: bool = Field(
        default=False,
        description="Connect to the broker over TLS; also on when ca_file is set. Use the broker's "
        "TLS port (usually 8883).",
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificate(s) the broker's certificate must chain to; unset: the system's "
        "CA store.",
    )
    cert_file: Path | None = Field(
        default=None,
        description="This device's client certificate (PEM), its identity for a broker that requires "
        "one; with key_file.",
    )
    key_file: Path | None = Field(
        default=None, description="The unencrypted PEM private key of cert_file; readable by the agent only."
    )
    check_hostname: bool = Field(
        default=True,
        description="Check that the broker's certificate names [mqtt] host. false accepts any name on a "
        "certificate the CA signed: only for a lab broker reached by an address its certificate lacks.",
    )

    @property
    def active(self) -> bool:
        return self.enabled or self.ca_file is not None


class MqttConfig(_Section):
    host: str = Field(default="127.0.0.1", min_length=1, description="MQTT broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="MQTT broker TCP port.")
    topic_prefix: str = Field(
        default="edgefleet/v1", min_length=1, description="Prefix of every edgefleet topic."
    )
    keepalive_s: int = Field(default=30, ge=5, le=65535, description="MQTT keepalive in seconds.")
    username: str | None = Field(default=None, description="Broker user name, if the broker requires one.")
    password: str | None = Field(default=None, description="Broker password, if the broker requires one.")
    password_file: Path | None = Field(default=None, description=PASSWORD_FILE_HELP)
    queue_limit: int = Field(
        default=10_000,
        ge=1,
        description="Messages the on-disk outbox (state_dir/outbox.sqlite) keeps until the broker "
        "acknowledges them; when full, the oldest are dropped and counted in telemetry.",
    )
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig, description="TLS to the broker.")

    @model_validator(mode="before")
    @classmethod
    def resolve_password_file(cls, data: Any, info: ValidationInfo) -> Any:
        return password_from_file(data, info)


class ApiConfig(_Section):
    host: str = Field(default="127.0.0.1", min_length=1, description="Address the inference API listens on.")
    port: int = Field(
        default=8500, ge=0, le=65535, description="TCP port of the inference API (0: any free)."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (binary forms; JSON has max_json_body_bytes); "
        "larger ones get 413 unread.",
    )
    max_json_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest JSON request body; parsing JSON takes up to ~40x its size, so it has a "
        "lower limit than binary bodies. Larger ones get 413 (send application/octet-stream or "
        "application/x-npz instead).",
    )
    max_inflight_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        description="Memory budget shared by all requests in flight: a request reserves its body (a "
        "binary one twice), then a JSON body its parse cost and an .npz body its unpacked size. One "
        "that does not fit waits up to busy_wait_s, then gets 503 with Retry-After; one that can never "
        "fit gets 413. Keep it well under the unit's MemoryMax.",
    )
    busy_wait_s: float = Field(
        default=1.0,
        ge=0,
        description="Seconds a request waits for room in max_inflight_bytes before it gets 503.",
    )
    max_connections: int = Field(
        default=64,
        ge=1,
        description="Connections served at once (one thread each); one more is answered 503 with "
        "Retry-After and closed.",
    )
    backlog: int = Field(
        default=128,
        ge=1,
        le=65535,
        description="Listen backlog: connections the kernel queues until the agent accepts them "
        "(capped by net.core.somaxconn).",
    )
    header_timeout_s: float = Field(
        default=10,
        gt=0,
        description="Seconds a client has for the request line and headers, from connecting (on a "
        "kept-alive connection: from the request's first byte); then 408 and the connection closes.",
    )
    body_timeout_s: float = Field(
        default=30,
        gt=0,
        description="Seconds a client has to send the whole request body; then 408 and the "
        "connection closes.",
    )
    idle_timeout_s: float = Field(
        default=60,
        gt=0,
        description="Seconds an idle kept-alive connection stays open waiting for its next request.",
    )
    max_instances: int = Field(
        default=4096,
        ge=1,
        description="Most instances one predict request may carry; more get 400 naming the limit (a "
        "fixed-batch model runs one invoke per batch of its size, never resized).",
    )
    unix_socket: Path | None = Field(
        default=None,
        description="Also serve the same API on this Unix socket path (e.g. /run/edgefleet/agent.sock); "
        "none by default.",
    )
    metrics: bool = Field(
        default=False,
        description="Serve GET /metrics (Prometheus text: request counters, latency and invoke "
        "histograms, update state, outbox, process memory and CPU) on the same listener; off: 404.",
    )

    @model_validator(mode="after")
    def _body_fits_budget(self) -> ApiConfig:
        if 2 * self.max_body_bytes > self.max_inflight_bytes:
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least twice max_body_bytes "
                f"({self.max_body_bytes}): a binary body counts twice; raise the one or lower the other"
            )
        return self


class TelemetryConfig(_Section):
    interval_s: float = Field(default=60, gt=0, description="Seconds per telemetry window.")


class RuntimeConfig(_Section):
    kind: Literal["auto", "tflite-runtime", "litert"] = Field(
        default="auto",
        description="TFLite runtime to run models in; auto takes LiteRT when installed (faster, "
        "XNNPACK for int8), else tflite-runtime.",
    )
    threads: int = Field(default=1, ge=1, le=64, description="Interpreter threads per model.")


class UpdateConfig(_Section):
    max_state_restarts: int = Field(
        default=3,
        ge=1,
        description="How often the agent may restart inside one update state (crash loop) before it "
        "gives up and rolls back.",
    )
    probation_s: float = Field(
        default=30,
        ge=0,
        description="Seconds a newly activated model is watched before the update commits; 0: commit at "
        "once.",
    )
    probation_requests: int = Field(
        default=0,
        ge=0,
        description="End probation early once this many requests were served by the new model; 0: time only.",
    )
    probation_min_requests: int = Field(
        default=20,
        ge=1,
        description="Requests the new model must have served before its error rate is judged.",
    )
    probation_min_invokes: int = Field(
        default=200,
        ge=1,
        description="Timed requests needed from both the new model (on probation) and the previous one "
        "(recently) before invoke time is judged; with fewer the model is not failed on speed and the "
        "log says so.",
    )
    max_error_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Roll back when more than this share of the new model's requests fail in inference.",
    )
    max_latency_factor: float = Field(
        default=2.0,
        gt=0,
        description="Roll back when the new model costs more than this factor x the previous one's: "
        "measured side by side at activation (CPU time of the two models in turns, lower 95% bound "
        "of the median pair ratio), or on the requests (invoke time per instance without queueing, "
        "10th percentile and likewise CPU time, beyond the 95% bounds of both). Request latency is "
        "not judged: it follows the load.",
    )
    health_check_interval_s: float = Field(
        default=5,
        gt=0,
        description="Seconds between probation health checks (the bundle's samples through the serving "
        "model).",
    )
    download_attempts: int = Field(
        default=5,
        ge=1,
        description="Tries per download; each retry resumes with an HTTP Range request.",
    )
    retry_base_s: float = Field(
        default=1.0,
        ge=0,
        description="First retry delay in seconds; doubled per retry (capped at 60 s), with random jitter.",
    )
    keep_previous: int = Field(
        default=1,
        ge=0,
        description="Previous models kept in the state directory after a commit (newest first; older "
        "ones are removed). A desired model still kept is installed without a download: verified "
        "from disk, smoke-tested, and switched to.",
    )


class AgentConfig(_Section):
    device_id: str = Field(
        pattern=DEVICE_ID_PATTERN,
        description="This device's id: 1-64 letters, digits, _ . -; also the MQTT client id.",
    )
    state_dir: Path = Field(
        default=Path("/var/lib/edgefleet"),
        description="Directory for models, the active pointer, the update state and telemetry counters.",
    )
    trusted_keys: list[Path] = Field(
        default_factory=lambda: [Path("/etc/edgefleet/trusted")],
        min_length=1,
        description="Public key files (*.pub) or directories of them; bundles must be signed by one.",
    )
    fleet: FleetConfig = Field(description="Where the desired state and bundles come from.")
    mqtt: MqttConfig = Field(
        default_factory=MqttConfig, description="Broker for status, events and telemetry."
    )
    api: ApiConfig = Field(default_factory=ApiConfig, description="The local inference HTTP API.")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="Telemetry windows.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="The inference runtime.")
    update: UpdateConfig = Field(default_factory=UpdateConfig, description="The update state machine.")
    log: LogConfig = Field(default_factory=LogConfig, description="The agent's log.")
    remote: RemoteAccessConfig = Field(
        default_factory=RemoteAccessConfig, description="What the fleet may do from afar."
    )
    capture: CaptureConfig = Field(default_factory=CaptureConfig, description="Data capture for retraining.")


def _field_at(path: tuple[int | str, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding the last key of ``path`` and that key's field (None when unknown)."""
    model: type[BaseModel] | None = AgentConfig
    info: FieldInfo | None = None
    for part in path:
        if model is None or not isinstance(part, str):
            return None, None
        info = model.model_fields.get(part)
        if info is None:
            return model, None
        annotation = info.annotation
        owner = model
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if part == path[-1]:
            return owner, info
    return model, info


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per problem, in words: ``where: what is wrong (what the key is for)``."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = error_location(loc, "(file)")
        owner, info = _field_at(loc)
        if error["type"] == "extra_forbidden":
            section = error_location(loc[:-1], "")
            known = ", ".join(owner.model_fields) if owner is not None else ""
            place = f"[{section}]" if section else "the top level"
            lines.append(f"{where}: unknown key; {place} takes: {known}")
            continue
        if error["type"] == "missing":
            lines.append(f"{where}: required but missing" + (f" ({info.description})" if info else ""))
            continue
        given = error.get("input")
        shown = f" = {given!r}" if isinstance(given, str | int | float | bool) else ""
        hint = f" ({info.description})" if info is not None and info.description else ""
        lines.append(f"{where}{shown}: {error['msg']}{hint}")
    return lines


def parse_config(
    data: dict[str, object], source: str = "config", environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate ``data``; ``environ`` (default: the process's) is where a ``password_file``
    credential name finds ``$CREDENTIALS_DIRECTORY``."""
    context = {"environ": os.environ if environ is None else environ}
    try:
        return AgentConfig.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(describe_errors(exc))) from exc


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read the TOML file, apply ``EDGEFLEET_AGENT_*`` overrides, validate; ConfigError says what
    is wrong and where."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    environ = os.environ if environ is None else environ
    overrides = env_overrides(environ)
    source = str(path) + (" (with EDGEFLEET_AGENT_* overrides)" if overrides else "")
    return parse_config(merge(data, overrides), source, environ)


def fleet_credentials(config: AgentConfig) -> tuple[str, str] | None:
    """HTTP Basic credentials for the fleet: [fleet] ones, else the broker's; None when incomplete."""
    user = config.fleet.username or config.mqtt.username
    secret = config.fleet.password or config.mqtt.password
    return (user, secret) if user and secret else None
