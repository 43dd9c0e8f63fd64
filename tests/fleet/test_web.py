"""The dashboard in headless Chromium (Debian's package, driven by Playwright; no browser download).

Screenshots go to the test's tmp dir and to ``test-artifacts/fleet-web/`` (git-ignored).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleet.auth import parse_tokens
from protocol.messages import LatencySummary, PredictionHealth, ResourceUsage, TelemetryWindow
from protocol.schema import ModelRef
from protocol.topics import Topics
from tests.fleet.bundles import build_bundle
from tests.fleet.mqtt_helpers import TestClient, status, wait_for
from tests.support.fleet import RunningFleet

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOPICS = Topics()
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "fleet-web"
V1 = ModelRef(name="digits", version="1.0.0")


@pytest.fixture
def page() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup-services (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield context.new_page()
        context.close()
        browser.close()


def shoot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    assert path.stat().st_size > 10_000
    return path


def windows(device_id: str, count: int) -> Iterator[bytes]:
    now = datetime.now(UTC).replace(microsecond=0)
    for seq in range(count):
        end = now - timedelta(minutes=count - seq - 1)
        yield (
            TelemetryWindow(
                device_id=device_id,
                seq=seq,
                window_start=end - timedelta(seconds=60),
                window_end=end,
                model=V1,
                requests=600 + 30 * (seq % 7),
                errors={"inference": seq % 3},
                latency_ms=LatencySummary(p50=3 + seq % 5, p95=7 + seq % 9, p99=11 + seq % 13, max=30),
                resources=ResourceUsage(
                    cpu_percent=20 + 3 * (seq % 10),
                    process_rss_bytes=(60 + seq % 8) << 20,
                    memory_used_percent=40 + seq % 6,
                    memory_available_bytes=1 << 30,
                    temperature_c=45 + (seq % 12) / 2,
                ),
                uptime_s=seq * 60,
                prediction=PredictionHealth(
                    predictions=600, drift_psi=0.02 * (seq % 6), low_confidence_share=0.1
                ),
            )
            .model_dump_json()
            .encode()
        )


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
