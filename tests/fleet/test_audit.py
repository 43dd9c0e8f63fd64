"""The audit log: every operator and device-lifecycle action lands with its actor, role, target and
client address; refused actions do not; the API filters and pages; the CLI prints it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleet.__main__ import main as edgefleet_main
from fleet.auth import parse_tokens
from fleet.storage.ingest import store_decoded
from fleet.storage.records import Decoded
from protocol.messages import DeviceStatus, Presence
from tests.fleet.bundles import build_bundle
from tests.support.fleet import InProcessFleet, RunningFleet

OCTET = {"Content-Type": "application/octet-stream"}
TOKENS = (
    "admin ada admin-token-0123456789\n"
    "operator olga operator-token-012345\n"
    "viewer vic viewer-token-0123456789\n"
)
ADA = {"Authorization": "Bearer admin-token-0123456789"}
OLGA = {"Authorization": "Bearer operator-token-012345"}
VIC = {"Authorization": "Bearer viewer-token-0123456789"}


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def test_each_action_kind_is_recorded_with_its_actor(
    api: InProcessFleet, signing_keys: tuple[Path, Path]
) -> None:
    api.context.tokens = parse_tokens(TOKENS)
    client = api.client
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        bundle = build_bundle(signing_keys[0], "digits", version)
        ok(client.post("/api/v1/models", content=bundle, headers={**OCTET, **ADA}), 201)
    ok(client.delete("/api/v1/models/digits/3.0.0", headers=ADA), 204)
    ok(client.post("/api/v1/deployments", json={"name": "digits", "version": "1.0.0"}, headers=OLGA))
    ok(client.post("/api/v1/devices", json={"device_id": "pi-1"}, headers=ADA), 201)
    ok(client.patch("/api/v1/devices/pi-1", json={"tags": ["lab"]}, headers=OLGA))
    body = {"name": "digits", "version": "1.0.0", "device_id": "pi-1"}
    ok(client.post("/api/v1/deployments", json=body, headers=OLGA))
    ok(client.delete("/api/v1/devices/pi-1/desired", headers=OLGA), 204)
    status = DeviceStatus(
        device_id="d1", presence=Presence.ONLINE, ts=datetime.now(UTC), agent_version="0.1.0"
    )
    with api.context.engine.begin() as conn:
        store_decoded(conn, Decoded(status, datetime.now(UTC)))
    rollout = {"name": "digits", "version": "2.0.0", "target": {"all": True}, "gates": {"soak_s": 60}}
    rid = ok(client.post("/api/v1/rollouts", json=rollout, headers=OLGA), 201)["id"]
    for action in ("pause", "resume", "abort", "rollback"):
        ok(client.post(f"/api/v1/rollouts/{rid}/{action}", headers=OLGA))
    ok(client.post("/api/v1/devices/pi-1/rotate-secret", headers=ADA))
    ok(client.post("/api/v1/devices/pi-1/revoke", headers=ADA))
    ok(client.delete("/api/v1/devices/pi-1", headers=ADA))
    # Refused actions leave no entry: a viewer deploying, a conflict, a missing device.
    assert client.post("/api/v1/deployments", json=body, headers=VIC).status_code == 403
    assert client.post("/api/v1/rollouts", json=rollout, headers=OLGA).status_code in (201, 409)
    assert client.post("/api/v1/devices/nobody/revoke", headers=ADA).status_code == 404

    assert client.get("/api/v1/audit", headers=VIC).status_code == 403
    entries = ok(client.get("/api/v1/audit?limit=1000", headers=OLGA))
    seen = [(e["action"], e["actor"], e["role"], e["target"]) for e in reversed(entries)]
    expected = [
        ("model.upload", "ada", "admin", "digits 1.0.0"),
        ("model.upload", "ada", "admin", "digits 2.0.0"),
        ("model.upload", "ada", "admin", "digits 3.0.0"),
        ("model.delete", "ada", "admin", "digits 3.0.0"),
        ("deploy", "olga", "operator", "digits 1.0.0"),
        ("device.add", "ada", "admin", "pi-1"),
        ("device.patch", "olga", "operator", "pi-1"),
        ("deploy", "olga", "operator", "digits 1.0.0"),
        ("device.clear_desired", "olga", "operator", "pi-1"),
        ("rollout.start", "olga", "operator", f"rollout {rid}"),
        ("rollout.pause", "olga", "operator", f"rollout {rid}"),
        ("rollout.resume", "olga", "operator", f"rollout {rid}"),
        ("rollout.abort", "olga", "operator", f"rollout {rid}"),
        ("rollout.rollback", "olga", "operator", f"rollout {rid}"),
        ("device.rotate_secret", "ada", "admin", "pi-1"),
        ("device.revoke", "ada", "admin", "pi-1"),
        ("device.delete", "ada", "admin", "pi-1"),
    ]
    assert seen[: len(expected)] == expected
    assert all(e["client"] == "testclient" for e in entries)  # the address the fleet saw
    assert entries[-5]["detail"] == {"device_id": None}  # the fleet-wide deploy
    assert [e["detail"] for e in entries if e["action"] == "device.patch"] == [{"tags": ["lab"]}]

    # Filters and pages.
    mine = ok(client.get("/api/v1/audit?actor=ada&action=device.revoke", headers=ADA))
    assert [(e["actor"], e["action"]) for e in mine] == [("ada", "device.revoke")]
    first = ok(client.get("/api/v1/audit?limit=5", headers=ADA))
    second = ok(client.get(f"/api/v1/audit?limit=5&before={first[-1]['id']}", headers=ADA))
    assert len(first) == len(second) == 5 and first[-1]["id"] > second[0]["id"]
    future = ok(client.get("/api/v1/audit", params={"since": "2100-01-01T00:00:00Z"}, headers=ADA))
    assert future == []


def test_audit_list_cli(
    fleet: RunningFleet, signing_keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.server.context.tokens = parse_tokens(TOKENS)
    bundle = tmp_path / "digits.bundle"
    bundle.write_bytes(build_bundle(signing_keys[0], "digits", "1.0.0"))
    url = ("--fleet", fleet.url, "--token", "admin-token-0123456789")
    assert edgefleet_main(["model", "push", str(bundle), *url]) == 0
    assert edgefleet_main(["model", "deploy", "digits", "1.0.0", *url]) == 0
    capsys.readouterr()
    assert edgefleet_main(["audit", "list", "--actor", "ada", "--limit", "1", *url]) == 0
    out = capsys.readouterr().out
    assert "deploy" in out and "ada (admin)" in out and "127.0.0.1" in out and "model.upload" not in out
    assert "(more: --before" in out
    assert edgefleet_main(["audit", "list", "--fleet", fleet.url, "--token", "viewer-token-0123456789"]) == 2
    assert "403" in capsys.readouterr().err


def test_a_failed_audit_write_leaves_the_action_done(
    api: InProcessFleet, signing_keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The audit store breaking (here: its table gone, as a full disk or a botched manual migration
    would leave it) must not turn a done deploy into a 500 the operator would repeat."""
    api.context.tokens = parse_tokens(TOKENS)
    client = api.client
    ok(
        client.post(
            "/api/v1/models",
            content=build_bundle(signing_keys[0], "digits", "1.0.0"),
            headers={**OCTET, **ADA},
        ),
        201,
    )
    ok(client.post("/api/v1/devices", json={"device_id": "pi-1"}, headers=ADA), 201)
    with api.context.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit_log RENAME TO audit_log_away")
    body = {"name": "digits", "version": "1.0.0", "device_id": "pi-1"}
    with caplog.at_level("ERROR", logger="fleet.api.audit"):
        ok(client.post("/api/v1/deployments", json=body, headers=OLGA))
    model = ok(client.get("/api/v1/devices/pi-1/desired", headers=OLGA))["model"]
    assert (model["name"], model["version"]) == ("digits", "1.0.0")
    logged = [r.getMessage() for r in caplog.records if r.name == "fleet.api.audit"]
    assert any("could not write the audit entry: olga (operator) deploy digits 1.0.0" in m for m in logged)
    with api.context.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit_log_away RENAME TO audit_log")
    assert [e["action"] for e in ok(client.get("/api/v1/audit", headers=OLGA))] == [
        "device.add",
        "model.upload",
    ]
