"""The agent's configuration: one TOML file, strict pydantic models, loaded in one place.

Every field carries a description; ``reference_markdown()`` renders them for docs/agent.md and
``edgefleet agent check-config`` reports problems as ``field.path: message``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from agent.errors import ConfigError
from protocol.schema import DEVICE_ID_PATTERN


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
    ca_file: Path | None = Field(
        default=None,
        description="For an https:// url: PEM CA certificate(s) the fleet's certificate (and that of "
        "any bundle host) must chain to; unset: the system's CA store. The host name is always checked.",
    )


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
    queue_limit: int = Field(
        default=10_000,
        ge=1,
        description="Messages the on-disk outbox (state_dir/outbox.sqlite) keeps until the broker "
        "acknowledges them; when full, the oldest are dropped and counted in telemetry.",
    )
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig, description="TLS to the broker.")


class ApiConfig(_Section):
    host: str = Field(default="127.0.0.1", min_length=1, description="Address the inference API listens on.")
    port: int = Field(
        default=8500, ge=0, le=65535, description="TCP port of the inference API (0: any free)."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
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
        description="Requests the new model must have served before its error rate or latency is judged.",
    )
    max_error_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Roll back when more than this share of the new model's requests fail in inference.",
    )
    max_latency_factor: float = Field(
        default=3.0,
        gt=0,
        description="Roll back when the new model's p50 latency exceeds the previous model's by this factor.",
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
        where = ".".join(str(p) for p in loc) or "(file)"
        owner, info = _field_at(loc)
        if error["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in loc[:-1])
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


def parse_config(data: dict[str, object], source: str = "config") -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(describe_errors(exc))) from exc


ENV_PREFIX = "EDGEFLEET_AGENT_"


def env_overrides(environ: Mapping[str, str]) -> dict[str, object]:
    """``EDGEFLEET_AGENT_<KEY>`` or ``EDGEFLEET_AGENT_<SECTION>__<KEY>`` -> nested config values.

    A value is read as a TOML value when it parses as one (``8500``, ``true``, ``["a", "b"]``),
    else as a string; an unknown key is reported like one in the file.
    """
    out: dict[str, object] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        try:
            value: object = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


def _merge(base: dict[str, object], over: dict[str, object]) -> dict[str, object]:
    merged = dict(base)
    for key, value in over.items():
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


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
    overrides = env_overrides(os.environ if environ is None else environ)
    source = str(path) + (" (with EDGEFLEET_AGENT_* overrides)" if overrides else "")
    return parse_config(_merge(data, overrides), source)


def reference_markdown() -> str:
    """A Markdown table per section, from the field descriptions (docs/agent.md embeds it)."""
    out: list[str] = []

    def section(model: type[BaseModel], title: str, prefix: str = "") -> None:
        out.append(f"### `{title}`\n\n| key | default | description |\n|---|---|---|")
        nested: list[tuple[type[BaseModel], str]] = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((annotation, name))
                continue
            if field.is_required():
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                if isinstance(value, list):
                    value = [str(v) for v in value]
                default = "`" + (str(value) if not isinstance(value, str) else repr(value)) + "`"
            out.append(f"| `{name}` | {default} | {field.description or ''} |")
        out.append("")
        for sub, name in nested:
            section(sub, f"[{prefix}{name}]", f"{prefix}{name}.")

    section(AgentConfig, "top level")
    return "\n".join(out)


def fleet_credentials(config: AgentConfig) -> tuple[str, str] | None:
    """HTTP Basic credentials for the fleet: [fleet] ones, else the broker's; None when incomplete."""
    user = config.fleet.username or config.mqtt.username
    secret = config.fleet.password or config.mqtt.password
    return (user, secret) if user and secret else None
