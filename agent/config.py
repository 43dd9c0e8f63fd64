"""The agent's configuration: one TOML file, strict pydantic models, loaded in one place.

Every field carries a description; ``reference_markdown()`` renders them for docs/agent.md and
``edgefleet agent check-config`` reports problems as ``field.path: message``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
        default=1000,
        ge=1,
        description="Messages kept in memory while the broker is unreachable; older ones are dropped "
        "and counted.",
    )


class ApiConfig(_Section):
    host: str = Field(default="127.0.0.1", min_length=1, description="Address the inference API listens on.")
    port: int = Field(
        default=8500, ge=0, le=65535, description="TCP port of the inference API (0: any free)."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )


class TelemetryConfig(_Section):
    interval_s: float = Field(default=60, gt=0, description="Seconds per telemetry window.")


class RuntimeConfig(_Section):
    kind: Literal["auto", "tflite-runtime", "litert"] = Field(
        default="auto", description="TFLite runtime to run models in; auto prefers tflite-runtime."
    )
    threads: int = Field(default=1, ge=1, le=64, description="Interpreter threads per model.")


class UpdateConfig(_Section):
    max_state_restarts: int = Field(
        default=3,
        ge=1,
        description="How often the agent may restart inside one update state (crash loop) before it "
        "gives up and rolls back.",
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


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per problem: ``field.path: message``."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(file)"
        lines.append(f"{where}: {error['msg']}")
    return lines


def parse_config(data: dict[str, object], source: str = "config") -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(describe_errors(exc))) from exc


def load_config(path: Path) -> AgentConfig:
    """Read and validate the TOML file; ConfigError says what is wrong and where."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return parse_config(data, str(path))


def reference_markdown() -> str:
    """A Markdown table per section, from the field descriptions (docs/agent.md embeds it)."""
    out: list[str] = []

    def section(model: type[BaseModel], title: str) -> None:
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
            section(sub, f"[{name}]")

    section(AgentConfig, "top level")
    return "\n".join(out)
