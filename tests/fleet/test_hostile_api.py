"""The HTTP API under hostile input, on SQLite and PostgreSQL: least privilege for device
credentials, one strict type per name, database bounds refused at the edge (422) and control
characters, NUL included (400 naming the field, never 500), and nothing stored from a refused request."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from fleet.auth import parse_tokens
from fleet.ingest.decode import Decoded, Received, decode
from fleet.storage import repository
from fleet.storage.schema import desired, device_meta
from protocol.schema import ModelRef
from protocol.topics import Topics
from tests.fleet.bundles import build_bundle
from tests.fleet.mqtt_helpers import status as status_payload
from tests.support.fleet import InProcessFleet

OCTET = {"Content-Type": "application/octet-stream"}
ADMIN = {"Authorization": "Bearer admin-token-0123456789"}
TOPICS = Topics()


@pytest.fixture
def secured(api: InProcessFleet, signing_keys: tuple[Path, Path]) -> InProcessFleet:
    api.context.tokens = parse_tokens("admin ada admin-token-0123456789\n")
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        bundle = build_bundle(signing_keys[0], "digits", version)
        assert (
            api.client.post("/api/v1/models", content=bundle, headers={**OCTET, **ADMIN}).status_code == 201
        )
    return api


def _provision(api: InProcessFleet, device_id: str) -> str:
    response = api.client.post("/api/v1/devices", json={"device_id": device_id}, headers=ADMIN)
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


def _reports_running(api: InProcessFleet, device_id: str, version: str) -> None:
    model = ModelRef(name="digits", version=version)
    item = decode(
        Received(TOPICS.status(device_id), status_payload(device_id, model=model), repository.now()),
        TOPICS,
        1 << 20,
    )
    assert isinstance(item, Decoded)
    with api.context.engine.begin() as conn:
        repository.store_decoded(conn, item)


def test_a_device_downloads_only_what_it_should_run_or_runs(secured: InProcessFleet) -> None:
    client = secured.client
    secret = _provision(secured, "pi-1")
    other = _provision(secured, "pi-2")

    def fetch(version: str, who: tuple[str, str] = ("pi-1", secret)) -> int:
        return client.get(f"/api/v1/models/digits/{version}/bundle", auth=who).status_code

    assert [fetch(v) for v in ("1.0.0", "2.0.0", "3.0.0")] == [403, 403, 403]
    client.post(
        "/api/v1/deployments", json={"name": "digits", "version": "1.0.0", "device_id": None}, headers=ADMIN
    )
    assert [fetch(v) for v in ("1.0.0", "2.0.0", "3.0.0")] == [200, 403, 403]  # the fleet default
    client.post(
        "/api/v1/deployments", json={"name": "digits", "version": "2.0.0", "device_id": "pi-1"}, headers=ADMIN
    )
    _reports_running(secured, "pi-1", "1.0.0")
    # Its own assignment, and the model it runs (what it restores on a rollback); never a third one.
    assert [fetch(v) for v in ("1.0.0", "2.0.0", "3.0.0")] == [200, 200, 403]
    assert [fetch(v, ("pi-2", other)) for v in ("1.0.0", "2.0.0", "3.0.0")] == [200, 403, 403]
    refused = client.get("/api/v1/models/digits/3.0.0/bundle", auth=("pi-1", secret))
    assert "may download only" in refused.json()["detail"]
    assert client.get("/api/v1/models/digits/3.0.0/bundle", headers=ADMIN).status_code == 200


@pytest.mark.parametrize(
    "device_id", ["dev-a\n", "dev\x00a", "dev\ta", "a" * 65, "-lead", "edgefleet-fleet", "../x"]
)
def test_names_that_are_not_device_ids_are_refused_and_nothing_is_stored(
    secured: InProcessFleet, device_id: str
) -> None:
    client = secured.client
    # A control character makes the request malformed (400); any other bad id is off-schema (422).
    expected = 400 if any(ord(char) < 0x20 for char in device_id) else 422
    body = {"name": "digits", "version": "1.0.0", "device_id": device_id}
    if device_id != "edgefleet-fleet":  # a valid id for the wire; only provisioning reserves it
        response = client.post("/api/v1/deployments", json=body, headers=ADMIN)
        assert response.status_code == expected and "body.device_id" in response.json()["detail"]
    response = client.post("/api/v1/devices", json={"device_id": device_id}, headers=ADMIN)
    assert response.status_code == expected and "body.device_id" in response.json()["detail"]
    with secured.context.engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(desired)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(device_meta)).scalar_one() == 0


def test_database_bounds_and_nul_bytes_are_client_errors(secured: InProcessFleet) -> None:
    client = secured.client
    secret = _provision(secured, "pi-1")
    # Ids a BIGINT cannot hold: refused before any query (a 500 on both databases before).
    for rollout_id in (2**63, 2**64, -1, 0):
        response = client.get(f"/api/v1/rollouts/{rollout_id}", headers=ADMIN)
        assert response.status_code == 422, (rollout_id, response.text)
        assert client.post(f"/api/v1/rollouts/{rollout_id}/pause", headers=ADMIN).status_code == 422
    assert client.get(f"/api/v1/rollouts/{2**63 - 1}", headers=ADMIN).status_code == 404
    # NUL (and other control characters) in a path, a body or a Basic user name: 400, naming the field.
    for path, field in (
        ("/api/v1/models/dig%00its/1.0.0", "path.name"),
        ("/api/v1/models/digits/1.0.0%00", "path.version"),
        ("/api/v1/devices/pi%001", "path.device_id"),
        ("/api/v1/devices/pi%0A1/telemetry", "path.device_id"),
        ("/api/v1/devices/pi%7F1", "path.device_id"),
    ):
        response = client.get(path, headers=ADMIN)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["detail"].startswith(f"{field}: contains the control character U+00")
    assert client.get("/api/v1/models/digits/1.0.0/bundle", auth=("pi\x001", secret)).status_code == 400
    assert client.get("/api/v1/devices/pi-1/desired", auth=("pi-1" * 20, secret)).status_code == 400
    for body, field in (
        ({"group": "line\x001"}, "body.group"),
        ({"tags": ["cam\x00"]}, "body.tags.0"),
        ({"group": "a\nb"}, "body.group"),
    ):
        response = client.patch("/api/v1/devices/pi-1", json=body, headers=ADMIN)
        assert response.status_code == 400 and response.json()["detail"].startswith(field), response.text
    start = {"name": "digits", "version": "1.0.0", "target": {"group": "g\x00"}}
    assert client.post("/api/v1/rollouts", json=start, headers=ADMIN).status_code == 400
    start = {"name": "digits\x00", "version": "1.0.0", "target": {"all": True}}
    assert client.post("/api/v1/rollouts", json=start, headers=ADMIN).status_code == 400
    # Off-schema without a control character stays a 422.
    assert client.get("/api/v1/devices/pi%201", headers=ADMIN).status_code == 422
    # Still serving, nothing half-stored.
    assert client.get("/api/v1/devices", headers=ADMIN).status_code == 200
    assert client.get("/api/v1/rollouts", headers=ADMIN).json() == []
