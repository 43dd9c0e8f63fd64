"""Remote configuration on the fleet's API (SQLite and PostgreSQL): a group's config reaches its
members' desired state, a device's own config wins over it, members are told to look, and a bad
config is refused with the agent's own words before anything is stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import FleetError
from fleet.remote_cli import settings_from, since_time
from protocol.messages import Command, CommandKind, DesiredState, parse_message
from protocol.remote import RemoteConfig
from protocol.topics import Topics
from tests.support.fleet import InProcessFleet

TOPICS = Topics()


def desired(api: InProcessFleet, device: str) -> DesiredState:
    response = api.client.get(f"/api/v1/devices/{device}/desired")
    assert response.status_code == 200, response.text
    return parse_message(DesiredState, response.content)


def put(api: InProcessFleet, path: str, settings: dict[str, Any]) -> Any:
    return api.client.put(path, json={"settings": settings})


def test_group_and_device_configs_reach_the_desired_state(api: InProcessFleet) -> None:
    for device, group in (("pi-1", "lab"), ("pi-2", "lab"), ("pi-3", "field")):
        added = api.client.post("/api/v1/devices", json={"device_id": device, "group": group})
        assert added.status_code == 201, added.text
    assert desired(api, "pi-1").config is None

    answer = put(api, "/api/v1/groups/lab/config", {"telemetry": {"interval_s": 30}})
    assert answer.status_code == 200, answer.text
    group_config = RemoteConfig.model_validate(answer.json()["config"])
    assert answer.json()["devices_notified"] == ["pi-1", "pi-2"]
    nudged = [
        topic
        for topic, payload in api.link.published
        if parse_message(Command, payload).command == CommandKind.CHECK_UPDATE
    ]
    assert nudged == [TOPICS.cmd("pi-1"), TOPICS.cmd("pi-2")]
    assert desired(api, "pi-1").config == group_config == desired(api, "pi-2").config
    assert desired(api, "pi-3").config is None

    own = put(api, "/api/v1/devices/pi-2/config", {"update": {"probation_s": 120}, "log": {"level": "debug"}})
    assert own.status_code == 200, own.text
    assert desired(api, "pi-2").config == RemoteConfig.model_validate(own.json()["config"])
    view = api.client.get("/api/v1/devices/pi-2/config").json()
    assert view["source"] == "pi-2" and view["report"] is None and view["in_sync"] is False
    assert api.client.get("/api/v1/devices/pi-1/config").json()["source"] == "group:lab"

    assert api.client.delete("/api/v1/devices/pi-2/config").status_code == 200
    assert desired(api, "pi-2").config == group_config  # the group's applies again
    assert api.client.delete("/api/v1/groups/lab/config").status_code == 200
    assert desired(api, "pi-1").config is None


def test_a_bad_config_is_refused_naming_every_problem(api: InProcessFleet) -> None:
    assert api.client.post("/api/v1/devices", json={"device_id": "pi-1"}).status_code == 201
    answer = put(
        api,
        "/api/v1/devices/pi-1/config",
        {"telemetry": {"interval_s": 0}, "fleet": {"url": "http://evil"}, "update": {"colour": "red"}},
    )
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert "telemetry.interval_s = 0: Input should be greater than 0" in detail
    assert "fleet: not a remotely settable section" in detail
    assert "update.colour: not remotely settable" in detail
    assert desired(api, "pi-1").config is None
    assert (
        api.client.put(
            "/api/v1/devices/pi-1/config", json={"settings": {"telemetry": {"interval_s": [1]}}}
        ).status_code
        == 422
    )
    assert api.client.put("/api/v1/devices/ghost/config", json={"settings": {}}).status_code == 404


def test_the_cli_reads_settings_and_times(tmp_path: Path) -> None:
    file = tmp_path / "cfg.toml"
    file.write_text('[update]\nprobation_s = 60\n[log]\nlevel = "warning"\n')
    settings = settings_from(
        ["telemetry.interval_s=30", "update.max_error_rate=0.1", "log.level=debug"], file
    )
    assert settings == {
        "update": {"probation_s": 60, "max_error_rate": 0.1},
        "log": {"level": "debug"},  # --set wins over the file
        "telemetry": {"interval_s": 30},
    }
    with pytest.raises(FleetError, match=r"expected section\.key=value"):
        settings_from(["interval_s=30"], None)
    file.write_text("probation_s = 60\n")
    with pytest.raises(FleetError, match="not a \\[section\\]"):
        settings_from([], file)
    ago = datetime.fromisoformat(since_time("10m"))
    assert timedelta(minutes=9) < datetime.now(UTC) - ago < timedelta(minutes=11)
    assert since_time("2026-01-01T00:00:00+00:00") == "2026-01-01T00:00:00+00:00"
    with pytest.raises(FleetError, match="give a duration"):
        since_time("yesterday")
