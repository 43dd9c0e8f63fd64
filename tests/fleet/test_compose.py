"""deploy/compose.yaml, checked without a Docker engine.

- Linted against the Compose specification's JSON schema (``check-jsonschema``'s vendored
  ``compose-spec`` schema, the one Compose itself follows): a misspelt key or a wrong value
  fails, naming where.
- Parsed with PyYAML, variables interpolated as Compose does, each fleet worker's command line
  parsed by the real ``edgefleet`` parser and turned into a FleetConfig, and the structure this
  deployment relies on checked: the services, their healthchecks, the start order on healthy
  dependencies, the shared artifacts volume, the shared subscription group and distinct client ids.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker is not None, "check-jsonschema is in the dev extra: run scripts/setup"
    return subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_follows_the_compose_specification() -> None:
    result = lint(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("mistake", "named"),
    [
        (("healthcheck:", "helthcheck:"), "'helthcheck' was unexpected"),
        (("condition: service_healthy", "condition: service_happy"), "'service_happy' is not one of"),
    ],
)
def test_the_linter_names_a_mistake(tmp_path: Path, mistake: tuple[str, str], named: str) -> None:
    """The lint above can fail: a copy with one mistake is refused, and the message says where."""
    broken = tmp_path / "compose.yaml"
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace(*mistake))
    result = lint(broken)
    assert result.returncode == 1
    assert named in result.stdout and "services" in result.stdout


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
