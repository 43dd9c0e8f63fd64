"""``edgefleet device add``: the agent config it writes is one the agent loads, secrets are escaped,
and names that are not device ids (or belong to the fleet) are refused."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import load_config
from fleet.auth import parse_tokens, verify_secret
from fleet.provision import DeviceAddRequest, provision
from tests.support.fleet import InProcessFleet

HOSTILE_SECRET = "a#b\"c\\d'e=f[g]0123456789"
"""A secret with every character TOML or a naive writer would trip on."""


def test_provisioned_agent_config_loads_in_the_agent(tmp_path: Path) -> None:
    answer, hashed = provision(
        DeviceAddRequest(device_id="pi-7", secret=HOSTILE_SECRET),
        fleet_url="http://fleet.example:8080",
        mqtt_host="broker.example",
        mqtt_port=8883,
        prefix="plant/v1",
    )
    path = tmp_path / "agent.toml"
    path.write_text(answer.agent_config)
    config = load_config(path, environ={})
    assert config.device_id == "pi-7"
    assert config.fleet.url == "http://fleet.example:8080"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.topic_prefix) == (
        "broker.example",
        8883,
        "plant/v1",
    )
    # The secret survives TOML whole: not cut at '#', quotes and backslashes escaped.
    assert (config.mqtt.username, config.mqtt.password) == ("pi-7", HOSTILE_SECRET)
    assert verify_secret(HOSTILE_SECRET, hashed)
    assert answer.password_file_line == f"pi-7:{hashed}"
    assert tomllib.loads(answer.agent_config)["state_dir"] == "/var/lib/edgefleet"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_id", "edgefleet-fleet"),  # the fleet's own broker user
        ("device_id", "EdgeFleet-fleet-host"),  # and its client ids
        ("device_id", "dev-a\n"),
        ("device_id", "a/b"),
        ("device_id", "a\x00b"),
        ("group", "line\n1"),
        ("secret", "0123456789abcdef\nuser:$7$x"),  # a second password-file line
        ("secret", "short"),
    ],
)
def test_device_add_refuses_what_is_not_a_name(field: str, value: str) -> None:
    body = {"device_id": "pi-1", field: value}
    with pytest.raises(ValidationError) as caught:
        DeviceAddRequest.model_validate(body)
    assert caught.value.errors()[0]["loc"][0] == field


def test_device_add_over_the_api_refuses_the_fleet_user(api: InProcessFleet) -> None:
    response = api.client.post("/api/v1/devices", json={"device_id": "edgefleet-fleet"})
    assert response.status_code == 422
    assert "reserved" in response.json()["detail"]
    assert api.client.post("/api/v1/devices", json={"device_id": "pi-1"}).status_code == 201


def test_a_token_may_contain_a_hash() -> None:
    tokens = parse_tokens("admin ada abc#0123456789abcdef  # a comment\n# viewer x y\n")
    assert [t.name for t in tokens] == ["ada"]
    assert parse_tokens("admin ada abc#0123456789abcdef")[0].digest == tokens[0].digest
