"""Deployments over real HTTP: desired state, and check-update commands on the device's cmd topic."""

from __future__ import annotations

from pathlib import Path

import requests

from protocol.messages import Command, CommandKind, DesiredState, parse_message
from protocol.topics import DeviceChannel, Topics
from tests.fleet.bundles import build_bundle
from tests.fleet.mqtt_helpers import TestClient, status, wait_for
from tests.support.fleet import RunningFleet

TOPICS = Topics()


def push(fleet: RunningFleet, data: bytes) -> dict[str, object]:
    response = fleet.post("/api/v1/models", data=data, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    info: dict[str, object] = response.json()
    return info


def desired(fleet: RunningFleet, device_id: str) -> DesiredState:
    return parse_message(DesiredState, fleet.get(f"/api/v1/devices/{device_id}/desired").content)


def test_deploy_to_one_device_and_to_all(
    fleet: RunningFleet, device: TestClient, signing_keys: tuple[Path, Path]
) -> None:
    v1 = push(fleet, build_bundle(signing_keys[0], "digits", "1.0.0"))
    v2 = push(fleet, build_bundle(signing_keys[0], "digits", "2.0.0"))
    for device_id in ("dev-a", "dev-b"):
        device.publish(TOPICS.status(device_id), status(device_id), retain=True)
    wait_for(lambda: len(fleet.json("/api/v1/devices")) == 2)
    device.subscribe(TOPICS.all_devices(DeviceChannel.CMD))

    assert desired(fleet, "dev-a").model is None

    # Fleet-wide default: both known devices are told to check; a device never seen gets it too.
    result = fleet.post("/api/v1/deployments", json={"name": "digits", "version": "1.0.0", "device_id": None})
    assert result.status_code == 200, result.text
    assert result.json()["devices_notified"] == ["dev-a", "dev-b"]
    got = {device.next_message().topic for _ in range(2)}
    assert got == {TOPICS.cmd("dev-a"), TOPICS.cmd("dev-b")}
    state = desired(fleet, "never-seen")
    assert state.model is not None and state.model.version == "1.0.0"
    assert state.model.sha256 == v1["sha256"] and state.model.size == v1["size"]
    assert state.model.url == f"{fleet.url}/api/v1/models/digits/1.0.0/bundle"
    assert (
        requests.get(state.model.url, timeout=10).content
        == (fleet.config.artifacts / "digits/1.0.0.bundle").read_bytes()
    )
    # A device resuming its download over real HTTP.
    part = requests.get(state.model.url, headers={"Range": "bytes=100-"}, timeout=10)
    assert part.status_code == 206
    assert part.content == (fleet.config.artifacts / "digits/1.0.0.bundle").read_bytes()[100:]
    assert part.headers["Content-Range"] == f"bytes 100-{state.model.size - 1}/{state.model.size}"

    # One device: only it is told, and its assignment overrides the default.
    result = fleet.post(
        "/api/v1/deployments", json={"name": "digits", "version": "2.0.0", "device_id": "dev-b"}
    )
    assert result.json()["devices_notified"] == ["dev-b"]
    message = device.next_message()
    assert message.topic == TOPICS.cmd("dev-b") and message.qos == 1
    assert parse_message(Command, bytes(message.payload)).command is CommandKind.CHECK_UPDATE
    b = desired(fleet, "dev-b").model
    assert b is not None and (b.version, b.sha256) == ("2.0.0", v2["sha256"])
    a = desired(fleet, "dev-a").model
    assert a is not None and a.version == "1.0.0"
    listed = {d["device_id"]: d["desired"]["version"] for d in fleet.json("/api/v1/devices")}
    assert listed == {"dev-a": "1.0.0", "dev-b": "2.0.0"}

    # A new fleet default does not reach the overridden device.
    result = fleet.post("/api/v1/deployments", json={"name": "digits", "version": "2.0.0", "device_id": None})
    assert result.json()["devices_notified"] == ["dev-a"]


def test_deploy_unknown_model_or_bad_device(fleet: RunningFleet) -> None:
    response = fleet.post(
        "/api/v1/deployments", json={"name": "digits", "version": "9.9.9", "device_id": None}
    )
    assert response.status_code == 404
    assert "no model digits 9.9.9" in response.json()["detail"]
    # "dev-a\n" passes a Python re.match with a $ anchor; the shared DeviceId type refuses it.
    # A control character is a malformed request (400), any other bad id an off-schema one (422).
    for bad, expected in (("a/b", 422), ("dev-a\n", 400), ("dev\x00a", 400), ("", 422)):
        response = fleet.post(
            "/api/v1/deployments", json={"name": "digits", "version": "1.0.0", "device_id": bad}
        )
        assert response.status_code == expected, bad
        assert response.json()["detail"].startswith("body.device_id:"), response.json()
    response = fleet.get("/api/v1/devices/bad%20id/desired")
    assert response.status_code == 422 and isinstance(response.json()["detail"], str)
