"""deploy/compose.yaml, checked without a Docker engine: parsed with PyYAML, variables interpolated
as Compose does, each fleet worker's command line parsed by the real ``edgefleet`` parser and
turned into a FleetConfig.

No Compose-specification JSON schema is at hand offline (and the ``jsonschema`` package is not
installed), so the structure this deployment relies on is checked instead: the services, their
healthchecks, the start order on healthy dependencies, the shared artifacts volume, the shared
subscription group and distinct client ids.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.cli import build_parser
from fleet.config import FleetConfig, MqttSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ENV = {"POSTGRES_PASSWORD": "s3cret"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise KeyError(f"{name}: {rest}")
        return rest if kind == "-" else ""

    return _VARIABLE.sub(one, value)


def compose(env: dict[str, str] = ENV) -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return interpolate({k: v for k, v in loaded.items() if not k.startswith("x-")}, env)


def workers(services: dict[str, Any]) -> dict[str, Any]:
    return {name: service for name, service in services.items() if name.startswith("fleet-")}


def test_services_start_in_order_and_have_healthchecks() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "broker", "fleet-1", "fleet-2"}
    for name, service in services.items():
        check = service.get("healthcheck", {}).get("test")
        assert isinstance(check, list) and check[0] in ("CMD", "CMD-SHELL"), name
        assert "image" in service or "build" in service, name
    for name, service in workers(services).items():
        assert service["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "broker": {"condition": "service_healthy"},
        }, name
        assert "artifacts:/artifacts" in service["volumes"], name
        assert ((DEPLOY / service["build"]["context"]).resolve() / "pyproject.toml").is_file()
        assert (DEPLOY / Path(service["build"]["dockerfile"]).name).is_file()
    assert set(compose()["volumes"]) == {"pgdata", "artifacts"}


def test_worker_command_lines_parse_into_one_cluster() -> None:
    services = compose()["services"]
    parser = build_parser()
    configs: dict[str, FleetConfig] = {}
    for name, service in workers(services).items():
        args = parser.parse_args(service["command"])
        assert (args.command, args.fleet_command) == ("fleet", "serve"), name
        host, port = args.listen.rsplit(":", 1)
        assert any(mapping.endswith(f":{port}") for mapping in service["ports"]), name
        configs[name] = FleetConfig(
            db_url=args.db,
            host=host,
            port=int(port),
            public_url=args.public_url,
            trusted_keys=args.trusted_keys,
            artifacts=args.artifacts,
            mqtt=MqttSettings(
                host=args.mqtt_host,
                port=args.mqtt_port,
                client_id=args.mqtt_client_id,
                shared_group=args.shared_group,
            ),
            leader_lease_s=args.leader_lease,
            leader_renew_s=args.leader_renew,
        )
    one, two = configs.values()
    assert one.db_url == two.db_url == "postgresql+psycopg://edgefleet:s3cret@postgres:5432/edgefleet"
    assert one.mqtt.host == two.mqtt.host == "broker" and "broker" in services
    assert one.mqtt.shared_group == two.mqtt.shared_group is not None  # the workers split the stream
    assert one.mqtt.client_id != two.mqtt.client_id  # each worker needs its own MQTT session
    assert one.public_url == two.public_url  # bundle URLs point at the one address devices reach
    assert one.artifacts == two.artifacts


def test_the_database_password_must_be_given() -> None:
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        compose({})
