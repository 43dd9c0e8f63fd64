"""The dashboard's read-only pages in headless Chromium (see ``web_support``); the operator actions
are in ``test_web_actions.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleet.auth import parse_tokens
from tests.fleet.bundles import build_bundle
from tests.fleet.mqtt_helpers import TestClient, status, wait_for
from tests.fleet.web_support import TOPICS, V1, page, shoot, windows
from tests.support.fleet import RunningFleet

__all__ = ["page"]  # the fixture, used by name


@pytest.mark.slow
def test_dashboard_pages_live_in_chromium(
    sqlite_fleet: RunningFleet, device: TestClient, signing_keys: tuple[Path, Path], page: Any, tmp_path: Path
) -> None:
    fleet = sqlite_fleet
    for version in ("1.0.0", "2.0.0"):
        data = build_bundle(signing_keys[0], "digits", version)
        assert fleet.post(
            "/api/v1/models", data=data, headers={"Content-Type": "application/octet-stream"}
        ).ok
    for device_id in ("cam-1", "cam-2", "cam-3"):
        device.publish(TOPICS.status(device_id), status(device_id, model=V1), retain=True)
    for payload in windows("cam-1", 90):
        device.client.publish(TOPICS.telemetry("cam-1"), payload, qos=1)
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 93, 20)
    started = fleet.post(
        "/api/v1/rollouts",
        json={"name": "digits", "version": "2.0.0", "target": {"all": True}, "gates": {"soak_s": 600}},
    )
    assert started.status_code == 201, started.text
    fleet.server.alerts.evaluate()
    assert fleet.post("/api/v1/devices", json={"device_id": "cam-9"}).status_code == 201  # never reports

    # The API asks for a token: the page shows the login form, then loads with the token.
    fleet.server.context.tokens = parse_tokens("viewer wall-screen viewer-token-0123456789")
    page.goto(fleet.url + "/")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", "viewer-token-0123456789")
    page.click("#login button")
    page.wait_for_selector("#devices tbody tr[data-device-id='cam-3']")
    assert page.inner_text("#card-devices .big") == "3"  # devices that reported
    assert "provisioned" in page.inner_text("#devices tbody tr[data-device-id='cam-9']")
    assert "digits 1.0.0" in page.inner_text("#models")
    assert "running" in page.inner_text("#rollouts")

    # Live: a device that appears now shows up without a reload.
    page.evaluate("window.__marker = 1")
    device.publish(TOPICS.status("cam-4"), status("cam-4"), retain=True)
    page.wait_for_selector("#devices tbody tr[data-device-id='cam-4']", timeout=10_000)
    assert page.evaluate("window.__marker") == 1
    shoot(page, tmp_path, "overview")

    page.click("a[href='#/device/cam-1']")
    page.wait_for_selector("#charts svg path.line")
    titles = page.eval_on_selector_all(".chart h3", "nodes => nodes.map(n => n.textContent)")
    for expected in ("Latency", "Throughput", "CPU", "Memory", "Temperature", "Prediction health"):
        assert any(t.startswith(expected) for t in titles), titles
    assert page.eval_on_selector_all("#charts svg path.line", "nodes => nodes.length") >= 10
    shoot(page, tmp_path, "device")

    page.goto(fleet.url + f"/#/rollout/{started.json()['id']}")
    page.wait_for_selector("#waves tbody tr")
    assert "running" in page.inner_text("#rollout-state")
    assert page.eval_on_selector_all("#waves tbody tr", "nodes => nodes.length") == 3
    assert "every targeted device can load it" in page.inner_text("#skipped")
    shoot(page, tmp_path, "rollout")
    assert page.evaluate("window.__marker") == 1  # never reloaded
