"""Shared by the dashboard tests: headless Debian Chromium driven by Playwright (no browser
download), screenshots, and telemetry windows to chart.

Screenshots go to the test's tmp dir and to ``test-artifacts/fleet-web/`` (git-ignored).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from protocol.messages import LatencySummary, PredictionHealth, ResourceUsage, TelemetryWindow
from protocol.schema import ModelRef
from protocol.topics import Topics

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
