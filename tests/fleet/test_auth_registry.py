"""Operator tokens and roles, device credentials, provisioning, model deletion and rollouts over the API."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleet.auth import Role, hash_secret, parse_tokens, verify_secret
from fleet.errors import FleetError
from tests.fleet.bundles import build_bundle
from tests.fleet.mqtt_helpers import status as status_payload
from tests.support.fleet import InProcessFleet

OCTET = {"Content-Type": "application/octet-stream"}
TOKENS = """
# role name token
viewer  vera   viewer-token-0123456789
operator otto  operator-token-0123456789
admin   ada    admin-token-0123456789
"""


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {role}-token-0123456789"}


@pytest.fixture
def secured(api: InProcessFleet) -> InProcessFleet:
    api.context.tokens = parse_tokens(TOKENS)
    return api


def test_token_file_parsing() -> None:
    tokens = parse_tokens(TOKENS)
    assert [(t.name, t.role) for t in tokens] == [
        ("vera", Role.VIEWER),
        ("otto", Role.OPERATOR),
        ("ada", Role.ADMIN),
    ]
    with pytest.raises(FleetError, match="role 'root'"):
        parse_tokens("root bob aaaaaaaaaaaaaaaaaaaa")
    with pytest.raises(FleetError, match="shorter than 16"):
        parse_tokens("admin bob short")


def test_secret_hash_is_mosquittos_format() -> None:
    hashed = hash_secret("correct horse battery")
    assert hashed.startswith("$7$101$") and verify_secret("correct horse battery", hashed)
    assert not verify_secret("wrong", hashed) and not verify_secret("x", "garbage")


def test_mosquitto_passwd_hash_verifies(tmp_path: Path) -> None:
    """A line written by the real mosquitto_passwd is accepted by our verifier (same format both ways)."""
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), "dev-1", "s3cret-s3cret"], check=True)
    user, hashed = path.read_text().strip().split(":", 1)
    assert user == "dev-1" and verify_secret("s3cret-s3cret", hashed)


def test_401_403_and_roles(secured: InProcessFleet, signing_keys: tuple[Path, Path]) -> None:
    client = secured.client
    assert client.get("/api/v1/health").status_code == 200
    assert client.get("/api/openapi.json").status_code == 200
    response = client.get("/api/v1/devices")
    assert response.status_code == 401 and "Bearer" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/api/v1/devices", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/v1/devices", headers=bearer("viewer")).status_code == 200

    data = build_bundle(signing_keys[0], "digits", "1.0.0")
    response = client.post("/api/v1/models", content=data, headers={**OCTET, **bearer("viewer")})
    assert response.status_code == 403 and "needs operator" in response.json()["detail"]
    assert (
        client.post("/api/v1/models", content=data, headers={**OCTET, **bearer("operator")}).status_code
        == 201
    )
    deploy = {"name": "digits", "version": "1.0.0", "device_id": None}
    assert client.post("/api/v1/deployments", json=deploy, headers=bearer("viewer")).status_code == 403
    assert client.post("/api/v1/deployments", json=deploy, headers=bearer("operator")).status_code == 200
    add = {"device_id": "pi-1"}
    assert client.post("/api/v1/devices", json=add, headers=bearer("operator")).status_code == 403
    assert client.delete("/api/v1/models/digits/1.0.0", headers=bearer("operator")).status_code == 403

    spec = client.get("/api/openapi.json").json()
    assert {"HTTPBearer", "HTTPBasic"} <= set(spec["components"]["securitySchemes"])
    assert "/api/v1/rollouts/{rollout_id}/pause" in spec["paths"]


def test_device_add_and_device_credentials(secured: InProcessFleet, signing_keys: tuple[Path, Path]) -> None:
    client = secured.client
    response = client.post(
        "/api/v1/devices",
        json={"device_id": "pi-1", "group": "line-1", "tags": ["cam"]},
        headers=bearer("admin"),
    )
    assert response.status_code == 201, response.text
    answer = response.json()
    secret = answer["secret"]
    user, hashed = answer["password_file_line"].split(":", 1)
    assert user == "pi-1" and verify_secret(secret, hashed)
    assert "pattern write edgefleet/v1/devices/%u/telemetry" in answer["acl"]
    assert 'username = "pi-1"' in answer["agent_config"] and secret in answer["agent_config"]
    assert "use_identity_as_username" in answer["tls_note"]
    again = client.post("/api/v1/devices", json={"device_id": "pi-1"}, headers=bearer("admin"))
    assert again.status_code == 409

    # A device reads its own desired state with its id and secret, not another device's.
    assert client.get("/api/v1/devices/pi-1/desired", auth=("pi-1", secret)).status_code == 200
    assert client.get("/api/v1/devices/pi-2/desired", auth=("pi-1", secret)).status_code == 403
    assert client.get("/api/v1/devices/pi-1/desired", auth=("pi-1", "wrong-secret")).status_code == 401
    assert client.get("/api/v1/devices/pi-1/desired").status_code == 401
    # ...and can download the bundle it is told to run (no other), but cannot list devices.
    data = build_bundle(signing_keys[0], "digits", "1.0.0")
    client.post("/api/v1/models", content=data, headers={**OCTET, **bearer("operator")})
    assert client.get("/api/v1/models/digits/1.0.0/bundle", auth=("pi-1", secret)).status_code == 403
    deployment = {"name": "digits", "version": "1.0.0", "device_id": "pi-1"}
    client.post("/api/v1/deployments", json=deployment, headers=bearer("operator"))
    assert client.get("/api/v1/models/digits/1.0.0/bundle", auth=("pi-1", secret)).content == data
    assert client.get("/api/v1/devices", auth=("pi-1", secret)).status_code == 401


def test_model_delete_refused_while_deployed(api: InProcessFleet, signing_keys: tuple[Path, Path]) -> None:
    client = api.client
    for version in ("1.0.0", "2.0.0"):
        client.post("/api/v1/models", content=build_bundle(signing_keys[0], "digits", version), headers=OCTET)
    client.post("/api/v1/deployments", json={"name": "digits", "version": "1.0.0", "device_id": None})
    response = client.delete("/api/v1/models/digits/1.0.0")
    assert response.status_code == 409 and "the fleet default" in response.json()["detail"]
    assert client.delete("/api/v1/models/digits/2.0.0").status_code == 204
    assert not (api.artifacts / "digits" / "2.0.0.bundle").exists()
    assert client.delete("/api/v1/models/digits/2.0.0").status_code == 404
    assert [m["version"] for m in client.get("/api/v1/models").json()] == ["1.0.0"]


def test_rollout_api(api: InProcessFleet, signing_keys: tuple[Path, Path]) -> None:
    from fleet.ingest.decode import Decoded, Received, decode
    from fleet.storage import repository
    from protocol.topics import Topics

    client = api.client
    for version in ("1.0.0", "2.0.0"):
        client.post("/api/v1/models", content=build_bundle(signing_keys[0], "digits", version), headers=OCTET)
    topics = Topics()
    for i in range(4):
        item = decode(
            Received(topics.status(f"d{i}"), status_payload(f"d{i}"), repository.now()), topics, 1 << 20
        )
        assert isinstance(item, Decoded)
        with api.context.engine.begin() as conn:
            repository.store_decoded(conn, item)
    client.patch("/api/v1/devices/d1", json={"tags": ["lab"]})
    assert client.get("/api/v1/devices/d1").json()["tags"] == ["lab"]

    bad = client.post(
        "/api/v1/rollouts", json={"name": "digits", "version": "9.0.0", "target": {"all": True}}
    )
    assert bad.status_code == 404 and "no model digits 9.0.0" in bad.json()["detail"]
    bad = client.post("/api/v1/rollouts", json={"name": "digits", "version": "2.0.0", "target": {}})
    assert bad.status_code == 422 and "exactly one" in bad.json()["detail"]
    bad = client.post(
        "/api/v1/rollouts",
        json={"name": "digits", "version": "2.0.0", "target": {"all": True}, "waves": ["x"]},
    )
    assert bad.status_code == 422

    body = {"name": "digits", "version": "2.0.0", "target": {"all": True}, "gates": {"soak_s": 60}}
    started = client.post("/api/v1/rollouts", json=body)
    assert started.status_code == 201, started.text
    view = started.json()
    assert view["waves"] == [1, 2, 4] and view["devices_assigned"] == 1 and view["state"] == "running"
    assert len(api.link.published) == 1
    assert client.post("/api/v1/rollouts", json=body).status_code == 409
    rid = view["id"]
    assert client.post(f"/api/v1/rollouts/{rid}/pause").json()["state"] == "paused"
    assert client.post(f"/api/v1/rollouts/{rid}/pause").status_code == 409
    assert client.post(f"/api/v1/rollouts/{rid}/resume", json={"reason": "fixed"}).json()["reason"] == "fixed"
    rolled = client.post(f"/api/v1/rollouts/{rid}/rollback").json()
    assert rolled["state"] == "rolled_back"
    assert [r["id"] for r in client.get("/api/v1/rollouts").json()] == [rid]
    assert client.get("/api/v1/rollouts/999").status_code == 404
    assert client.get("/api/v1/rollouts/abc").status_code == 422
