"""The device page's remote panel in headless Chromium against a real fleet (HTTP, MQTT, SQLite):
the remote config and the device's refusal with its reason, and Fetch log, answered by a device
stand-in over the broker."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from edgefleet.mosquitto import MosquittoBroker
from protocol.messages import Command, DeviceStatus, Presence, parse_message
from protocol.remote import ConfigOutcome, ConfigReport, LogChunk
from tests.fleet.mqtt_helpers import TestClient, wait_for
from tests.fleet.web_support import TOPICS, V1, page, shoot
from tests.support.fleet import RunningFleet

__all__ = ["page"]  # the fixture, used by name

pytestmark = pytest.mark.slow
DEVICE = "cam-1"
LOG_TEXT = "2026-01-01T00:00:00.000Z WARNING agent.telemetry: window late\n[redacted] stays redacted\n"


def status_with(report: ConfigReport | None) -> bytes:
    message = DeviceStatus(
        device_id=DEVICE,
        presence=Presence.ONLINE,
        ts=datetime.now(UTC),
        agent_version="0.1.0",
        runtime="tflite-runtime 2.14.0",
        model=V1,
        config=report,
    )
    return message.model_dump_json().encode()


def test_the_device_page_shows_the_config_report_and_fetches_a_log(
    sqlite_fleet: RunningFleet, device: TestClient, broker: MosquittoBroker, page: Any, tmp_path: Path
) -> None:
    fleet = sqlite_fleet
    device.publish(TOPICS.status(DEVICE), status_with(None), retain=True)
    wait_for(lambda: fleet.get(f"/api/v1/devices/{DEVICE}").status_code == 200)
    put = requests.put(
        f"{fleet.url}/api/v1/devices/{DEVICE}/config",
        json={"settings": {"telemetry": {"interval_s": 30}}},
        timeout=10,
    )
    assert put.ok, put.text
    revision = put.json()["config"]["revision"]
    refusal = ConfigReport(
        revision=revision,
        outcome=ConfigOutcome.REFUSED,
        reason="telemetry.interval_s = 30: local policy",
        ts=datetime.now(UTC),
    )
    device.publish(TOPICS.status(DEVICE), status_with(refusal), retain=True)
    wait_for(lambda: fleet.json(f"/api/v1/devices/{DEVICE}")["config"] is not None)

    page.goto(fleet.url + f"/#/device/{DEVICE}")
    page.wait_for_selector("#remote #logs-button")
    page.wait_for_function("document.querySelector('#device-config').textContent.includes('not in sync')")
    shown = page.inner_text("#device-config")
    assert '{"telemetry":{"interval_s":30}}' in shown and "telemetry.interval_s = 30: local policy" in shown
    assert "refused" in page.inner_text("#config-report")

    stand_in = TestClient(broker.host, broker.port)  # receives what the device would
    stand_in.subscribe(TOPICS.cmd(DEVICE))
    page.fill("#logs-lines", "20")
    page.select_option("#logs-level", "warning")
    page.click("#logs-button")
    command = parse_message(Command, stand_in.next_message().payload)
    assert command.logs is not None and (command.logs.lines, command.logs.level) == (20, "warning")
    answer = LogChunk(
        device_id=DEVICE,
        request_id=command.logs.request_id,
        seq=0,
        total=1,
        data=LogChunk.encode(zlib.compress(LOG_TEXT.encode())),
        lines=2,
    )
    stand_in.publish(TOPICS.logs(DEVICE, command.logs.request_id), answer.model_dump_json())
    page.wait_for_selector("#logs-text:not([hidden])")
    assert page.inner_text("#logs-text").strip() == LOG_TEXT.strip()
    assert "2 line(s)" in page.inner_text("#remote .result")
    shoot(page, tmp_path, "device-remote-log")
    stand_in.close()
