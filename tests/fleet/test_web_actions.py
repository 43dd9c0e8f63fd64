"""The dashboard's operator actions in headless Chromium, against a real fleet (HTTP, MQTT, SQLite):
sign-in and roles, deploy, rollout start/pause/resume, refusals shown verbatim, the device filter,
the chart range and the model-change markers. Every effect is checked through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from fleet.auth import parse_tokens
from protocol.messages import Presence
from protocol.schema import ModelRef
from tests.fleet.bundles import build_bundle
from tests.fleet.mqtt_helpers import TestClient, status, update_event, wait_for
from tests.fleet.test_compat import LITERT_ONLY, signed_bundle
from tests.fleet.web_support import TOPICS, V1, page, shoot, windows
from tests.support.fleet import RunningFleet

__all__ = ["page"]  # the fixture, used by name

pytestmark = pytest.mark.slow
VIEWER = "viewer-token-0123456789"
OPERATOR = "operator-token-0123456789"
TOKENS = f"viewer wall-screen {VIEWER}\noperator olga {OPERATOR}\n"
V2 = ModelRef(name="digits", version="2.0.0")


def seed(fleet: RunningFleet, device: TestClient, keys: tuple[Path, Path], telemetry: int = 0) -> None:
    """digits 1.0.0 and 2.0.0 uploaded; cam-1 and cam-2 (group lab, tag indoor) online on 1.0.0;
    cam-3 offline with no model. Done while the API is still open."""
    for version in ("1.0.0", "2.0.0"):
        body = build_bundle(keys[0], "digits", version)
        answer = fleet.post("/api/v1/models", data=body, headers={"Content-Type": "application/octet-stream"})
        assert answer.ok, answer.text
    device.publish(TOPICS.status("cam-1"), status("cam-1", model=V1), retain=True)
    device.publish(TOPICS.status("cam-2"), status("cam-2", model=V1), retain=True)
    device.publish(TOPICS.status("cam-3"), status("cam-3", Presence.OFFLINE), retain=True)
    for payload in windows("cam-1", telemetry):
        device.client.publish(TOPICS.telemetry("cam-1"), payload, qos=1)
    wait_for(lambda: fleet.json("/api/v1/stats")["stored"] == 3 + telemetry, 20)
    for device_id in ("cam-1", "cam-2"):
        labelled = requests.patch(
            f"{fleet.url}/api/v1/devices/{device_id}", json={"group": "lab", "tags": ["indoor"]}, timeout=10
        )
        assert labelled.ok, labelled.text


def sign_in(page: Any, token: str) -> None:
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", token)
    page.click("#login button")
    page.wait_for_selector("#whoami")


def as_operator(fleet: RunningFleet, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    return requests.request(method, f"{fleet.url}{path}", headers=headers, timeout=10, **kwargs)


def confirm(page: Any, button: str) -> str:
    """Click an action, check nothing was sent yet, confirm; the question asked."""
    page.click(button)
    page.wait_for_selector(".confirm:not([hidden]) .confirm-yes")
    question: str = page.inner_text(".confirm:not([hidden]) .question")
    page.click(".confirm:not([hidden]) .confirm-yes")
    return question


def test_viewer_sees_no_action_and_operator_does(
    sqlite_fleet: RunningFleet, device: TestClient, signing_keys: tuple[Path, Path], page: Any, tmp_path: Path
) -> None:
    fleet = sqlite_fleet
    seed(fleet, device, signing_keys)
    started = fleet.post(
        "/api/v1/rollouts", json={"name": "digits", "version": "2.0.0", "target": {"all": True}}
    )
    assert started.status_code == 201, started.text
    fleet.server.context.tokens = parse_tokens(TOKENS)

    page.goto(fleet.url + "/")
    sign_in(page, VIEWER)
    page.wait_for_selector("#devices tbody tr[data-device-id='cam-1']")
    assert page.inner_text("#whoami") == "wall-screen (viewer)"
    assert page.locator("#start-rollout").count() == 0
    page.goto(fleet.url + "/#/device/cam-1")
    page.wait_for_selector("#device-info h2")
    assert page.locator("#deploy").count() == 0
    page.goto(fleet.url + f"/#/rollout/{started.json()['id']}")
    page.wait_for_selector("#rollout-state")
    assert page.locator("#rollout-actions, button.action").count() == 0
    # The token lives in this tab's sessionStorage only: never in localStorage or the URL.
    assert page.evaluate("sessionStorage.getItem('edgefleet-token')") == VIEWER
    assert page.evaluate("localStorage.length") == 0
    assert VIEWER not in page.url
    shoot(page, tmp_path, "viewer-rollout")

    page.click("#sign-out")
    page.wait_for_selector("#login:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('edgefleet-token')") is None
    page.fill("#token", "not-a-token-at-all-0123")
    page.click("#login button")
    page.wait_for_selector("#login-error:not(:empty)")
    assert "the token is not valid here" in page.inner_text("#login-error")
    sign_in(page, OPERATOR)
    assert page.inner_text("#whoami") == "olga (operator)"
    page.wait_for_selector("#rollout-actions #rollout-pause:not([disabled])")
    assert page.is_enabled("#rollout-pause") and not page.is_enabled("#rollout-resume")
    page.goto(fleet.url + "/")
    page.wait_for_selector("#start-rollout #rollout-button")
    assert VIEWER not in page.url and OPERATOR not in page.url


def test_deploy_from_the_device_page_and_a_refusal_verbatim(
    sqlite_fleet: RunningFleet, device: TestClient, signing_keys: tuple[Path, Path], page: Any, tmp_path: Path
) -> None:
    fleet = sqlite_fleet
    seed(fleet, device, signing_keys)
    litert_only = signed_bundle(signing_keys[0], "3.0.0", LITERT_ONLY)  # cam-1 runs tflite-runtime
    assert fleet.post(
        "/api/v1/models", data=litert_only, headers={"Content-Type": "application/octet-stream"}
    ).ok
    fleet.server.context.tokens = parse_tokens(TOKENS)
    page.goto(fleet.url + "/#/device/cam-1")
    sign_in(page, OPERATOR)
    page.wait_for_selector("#deploy #deploy-button")

    # Cancel sends nothing.
    page.fill("#deploy-name", "digits")
    page.fill("#deploy-version", "2.0.0")
    page.click("#deploy-button")
    page.click(".confirm:not([hidden]) .confirm-no")
    assert as_operator(fleet, "GET", "/api/v1/devices/cam-1").json()["desired"] is None

    question = confirm(page, "#deploy-button")
    assert question == "Deploy digits 2.0.0 to cam-1? It is told to update now."
    page.wait_for_selector("#deploy .result .ok")
    desired = as_operator(fleet, "GET", "/api/v1/devices/cam-1").json()["desired"]
    assert (desired["name"], desired["version"]) == ("digits", "2.0.0")
    assert as_operator(fleet, "GET", "/api/v1/devices/cam-2").json()["desired"] is None
    page.wait_for_function(
        "document.querySelector('#device-info').textContent.includes('desired digits 2.0.0')"
    )

    # A refusal: the page shows the status and the API's detail exactly as the API words it.
    page.fill("#deploy-version", "9.9.9")
    confirm(page, "#deploy-button")
    page.wait_for_selector("#deploy .result .detail")
    direct = as_operator(
        fleet,
        "POST",
        "/api/v1/deployments",
        json={"name": "digits", "version": "9.9.9", "device_id": "cam-1"},
    )
    assert direct.status_code == 404
    assert page.inner_text("#deploy .result .detail") == direct.json()["detail"]
    assert page.inner_text("#deploy .result .error").strip() == "Refused (HTTP 404):"
    # A form the page can judge itself is refused before anything is asked.
    page.fill("#deploy-version", "")
    page.click("#deploy-button")
    assert page.inner_text("#deploy .result .detail") == "enter a model name and a version"
    assert page.locator(".confirm:not([hidden])").count() == 0
    # The runtime check's 409, word for word, and nothing assigned.
    page.fill("#deploy-version", "3.0.0")
    confirm(page, "#deploy-button")
    page.wait_for_selector("#deploy .result .detail")
    direct = as_operator(
        fleet,
        "POST",
        "/api/v1/deployments",
        json={"name": "digits", "version": "3.0.0", "device_id": "cam-1"},
    )
    assert direct.status_code == 409
    assert "tflite-runtime 2.14.0" in direct.json()["detail"]
    assert page.inner_text("#deploy .result .detail") == direct.json()["detail"]
    assert page.inner_text("#deploy .result .error").strip() == "Refused (HTTP 409):"
    assert as_operator(fleet, "GET", "/api/v1/devices/cam-1").json()["desired"]["version"] == "2.0.0"
    shoot(page, tmp_path, "device-deploy-refused")


def test_rollout_from_the_overview_then_pause_and_resume_on_an_open_api(
    sqlite_fleet: RunningFleet, device: TestClient, signing_keys: tuple[Path, Path], page: Any, tmp_path: Path
) -> None:
    fleet = sqlite_fleet
    seed(fleet, device, signing_keys)
    page.goto(fleet.url + "/")  # no tokens file: the API is open and the page says so
    page.wait_for_selector("#api-open")
    assert page.locator("#login:not([hidden])").count() == 0
    page.wait_for_selector("#start-rollout #rollout-button")
    page.fill("#rollout-name", "digits")
    page.fill("#rollout-version", "2.0.0")
    page.select_option("#rollout-target-kind", "group")
    page.click("#rollout-button")  # no group typed yet: the form says so, nothing is asked
    assert page.inner_text("#start-rollout .result .detail") == "enter the group to target"
    page.fill("#rollout-target", "lab")
    page.fill("#rollout-waves", "1, 100%")
    shoot(page, tmp_path, "overview-rollout-form")
    question = confirm(page, "#rollout-button")
    assert question == "Roll digits 2.0.0 out to group lab in waves 1, 100%, 600 s soak each?"

    page.wait_for_url("**/#/rollout/*")
    rollout_id = page.url.rsplit("/", 1)[1]
    rollout = fleet.json(f"/api/v1/rollouts/{rollout_id}")
    assert (rollout["name"], rollout["version"], rollout["state"]) == ("digits", "2.0.0", "running")
    assert rollout["target"] == {"all": False, "group": "lab", "tags": [], "devices": []}
    assert rollout["devices_total"] == 2

    page.wait_for_selector("#rollout-pause:not([disabled])")
    page.fill("#rollout-reason", "checking the <b>lab</b> cameras")
    confirm(page, "#rollout-pause")
    wait_for(lambda: fleet.json(f"/api/v1/rollouts/{rollout_id}")["state"] == "paused", 5)
    assert fleet.json(f"/api/v1/rollouts/{rollout_id}")["reason"] == "checking the <b>lab</b> cameras"
    page.wait_for_selector("#rollout-resume:not([disabled])")
    assert page.inner_text("#rollout-actions .result") == f"Rollout #{rollout_id} is paused."
    # The reason is shown as text, never parsed as markup.
    assert page.locator("#rollout-head b").count() == 0
    assert "checking the <b>lab</b> cameras" in page.inner_text("#rollout-head")
    shoot(page, tmp_path, "rollout-paused")
    page.fill("#rollout-reason", "")
    confirm(page, "#rollout-resume")
    wait_for(lambda: fleet.json(f"/api/v1/rollouts/{rollout_id}")["state"] == "running", 5)
    page.wait_for_selector("#rollout-pause:not([disabled])")


def test_filter_narrows_the_device_list(
    sqlite_fleet: RunningFleet, device: TestClient, signing_keys: tuple[Path, Path], page: Any, tmp_path: Path
) -> None:
    fleet = sqlite_fleet
    seed(fleet, device, signing_keys)
    device.publish(TOPICS.status("gate-7"), status("gate-7", model=V2), retain=True)
    wait_for(lambda: len(fleet.json("/api/v1/devices")) == 4, 10)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/devices?" in r.url else None)
    page.goto(fleet.url + "/")
    page.wait_for_selector("#devices tbody tr[data-device-id='gate-7']")

    def shown() -> list[str]:
        ids: list[str] = page.eval_on_selector_all(
            "#devices tbody tr[data-device-id]", "rows => rows.map(r => r.dataset.deviceId)"
        )
        return sorted(ids)

    def shows(*expected: str) -> None:  # the fleet filters: the rows change when its answer is in
        wait_for(lambda: shown() == list(expected), 5)

    shows("cam-1", "cam-2", "cam-3", "gate-7")
    page.fill("#filter-id", "CAM")
    shows("cam-1", "cam-2", "cam-3")
    page.select_option("#filter-presence", "offline")
    shows("cam-3")
    page.select_option("#filter-presence", "")
    page.select_option("#filter-group", "lab")
    shows("cam-1", "cam-2")
    page.fill("#filter-id", "2")
    shows("cam-2")
    page.wait_for_timeout(2500)  # a refresh keeps the filter
    assert shown() == ["cam-2"]
    assert page.inner_text("#filter-count").startswith("Showing 1 to 1 of 1 matching device(s)")
    # Filtered by the fleet, not in the page:
    assert any("q=2" in url and "group=lab" in url and "limit=100" in url for url in asked)
    page.fill("#filter-id", "")
    page.select_option("#filter-group", "")
    page.select_option("#filter-tag", "indoor")
    shows("cam-1", "cam-2")
    page.select_option("#filter-tag", "")
    page.select_option("#filter-model", "digits 2.0.0")
    shows("gate-7")
    page.fill("#filter-id", "nothing-like-this")
    wait_for(lambda: "No device matches the filter." in page.inner_text("#devices"), 5)
    page.fill("#filter-id", "")
    page.select_option("#filter-model", "")
    page.select_option("#filter-sort", "-device_id")
    wait_for(lambda: page.eval_on_selector("#devices tbody tr", "r => r.dataset.deviceId") == "gate-7", 5)
    shoot(page, tmp_path, "overview-filtered")


def test_the_overview_pages_through_the_fleets_cursors(
    sqlite_fleet: RunningFleet, page: Any, tmp_path: Path
) -> None:
    """250 provisioned devices: the page shows 100 at a time and walks the fleet's cursors."""
    fleet = sqlite_fleet
    for n in range(250):
        assert fleet.post("/api/v1/devices", json={"device_id": f"pi-{n:03d}"}).status_code == 201
    page.goto(fleet.url + "/")
    page.wait_for_selector("#devices tbody tr[data-device-id='pi-000']")

    def first_and_count() -> tuple[str, int]:
        ids: list[str] = page.eval_on_selector_all(
            "#devices tbody tr[data-device-id]", "rows => rows.map(r => r.dataset.deviceId)"
        )
        return (ids[0] if ids else "", len(ids))

    assert first_and_count() == ("pi-000", 100)
    assert page.inner_text("#filter-count").startswith("Showing 1 to 100 of 250 device(s)")
    assert page.is_disabled("#devices-prev")
    page.click("#devices-next")
    wait_for(lambda: first_and_count() == ("pi-100", 100), 5)
    page.click("#devices-next")
    wait_for(lambda: first_and_count() == ("pi-200", 50), 5)
    assert page.is_disabled("#devices-next")
    assert page.inner_text("#filter-count").startswith("Showing 201 to 250 of 250 device(s)")
    page.wait_for_timeout(2500)  # a refresh stays on the page
    assert first_and_count() == ("pi-200", 50)
    page.click("#devices-prev")
    wait_for(lambda: first_and_count() == ("pi-100", 100), 5)
    page.fill("#filter-id", "pi-24")  # a filter starts again from the first page
    wait_for(lambda: first_and_count() == ("pi-240", 10), 5)
    shoot(page, tmp_path, "overview-paged")


def test_chart_range_changes_the_request_and_a_commit_draws_a_marker(
    sqlite_fleet: RunningFleet, device: TestClient, signing_keys: tuple[Path, Path], page: Any, tmp_path: Path
) -> None:
    fleet = sqlite_fleet
    seed(fleet, device, signing_keys, telemetry=40)
    series: list[str] = []
    page.on("request", lambda r: series.append(r.url) if "/series?" in r.url else None)
    page.goto(fleet.url + "/#/device/cam-1")
    page.wait_for_selector("#charts svg path.line")
    assert any("hours=6&" in url for url in series), series
    assert page.get_attribute("#range button[data-hours='6']", "aria-pressed") == "true"
    assert page.locator("#charts path.marker").count() == 0

    # Playwright's sync API hands over request events while it waits: wait through it, not sleep.
    with page.expect_request(lambda r: "/series?hours=1&" in r.url, timeout=5_000):
        page.click("#range button[data-hours='1']")
    assert page.get_attribute("#range button[data-hours='1']", "aria-pressed") == "true"
    assert page.get_attribute("#range button[data-hours='6']", "aria-pressed") == "false"
    with page.expect_request(lambda r: "/series?hours=168&" in r.url, timeout=5_000):
        page.click("#range button[data-hours='168']")
    count = len(series)
    page.wait_for_timeout(4500)  # two more polls: they keep the chosen range
    assert len(series) >= count + 1, series
    assert all("hours=168&" in url for url in series[count - 1 :]), series[count - 1 :]
    with page.expect_request(lambda r: "/series?hours=1&" in r.url, timeout=5_000):
        page.click("#range button[data-hours='1']")

    # The agent commits 2.0.0: a dashed marker appears on every chart at the event's time.
    device.client.publish(TOPICS.events("cam-1"), update_event("cam-1", "commit", V2), qos=1)
    page.wait_for_selector("#charts path.marker.commit", state="attached", timeout=10_000)
    assert page.locator("#charts path.marker.commit").count() == page.locator("#charts .chart").count()
    title = page.eval_on_selector("#charts path.marker.commit title", "n => n.textContent")
    assert title == "digits 2.0.0 committed"
    device.client.publish(TOPICS.events("cam-1"), update_event("cam-1", "rollback", V2, "u2"), qos=1)
    page.wait_for_selector("#charts path.marker.rollback", state="attached", timeout=10_000)
    shoot(page, tmp_path, "device-range-markers")
