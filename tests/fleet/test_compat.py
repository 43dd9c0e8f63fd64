"""Runtime compatibility: the rule as a table of cases, then a real fleet over HTTP (SQLite and
PostgreSQL, a real broker) refusing, skipping and listing devices whose runtime cannot load a model."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleet.__main__ import main as fleet_main
from fleet.compat import DeviceRuntime, Verdict, check, split
from protocol.bundle import bundle_bytes
from protocol.manifest import Manifest, RuntimeCheck
from protocol.messages import DesiredState, DeviceStatus, Presence, parse_message
from protocol.signing import load_private_key, sign
from protocol.topics import Topics
from tests.fleet.bundles import make_manifest, model_files
from tests.fleet.mqtt_helpers import TestClient, wait_for
from tests.support.fleet import RunningFleet

TOPICS = Topics()
TFL = RuntimeCheck(version="2.14.0", loads=True)
LITERT = RuntimeCheck(version="1.0.1", loads=True)
TFL_FAILS = RuntimeCheck(
    version="2.14.0", loads=False, error="Didn't find op for builtin opcode 'STABLEHLO_ADD'"
)
LITERT_ONLY = {"litert": LITERT, "tflite-runtime": TFL_FAILS}

# (case, the manifest's runtimes, the device's reported runtime, verdict, words the detail must name)
CASES: list[tuple[str, dict[str, RuntimeCheck], str | None, Verdict, list[str]]] = [
    ("same version", {"tflite-runtime": TFL}, "tflite-runtime 2.14.0", Verdict.COMPATIBLE, []),
    ("newer patch", {"tflite-runtime": TFL}, "tflite-runtime 2.14.1", Verdict.COMPATIBLE, []),
    (
        "older patch",
        {"tflite-runtime": RuntimeCheck(version="2.14.3", loads=True)},
        "tflite-runtime 2.14.0",
        Verdict.COMPATIBLE,
        [],
    ),
    (
        "newer minor",
        {"tflite-runtime": TFL},
        "tflite-runtime 2.15.0",
        Verdict.INCOMPATIBLE,
        ["minor release", "2.15.0", "2.14.0"],
    ),
    ("older minor", {"tflite-runtime": TFL}, "tflite-runtime 2.13.1", Verdict.INCOMPATIBLE, ["2.13.1"]),
    ("other major", {"tflite-runtime": TFL}, "tflite-runtime 3.14.0", Verdict.INCOMPATIBLE, ["3.14.0"]),
    (
        "litert only, tflite device",
        LITERT_ONLY,
        "tflite-runtime 2.14.0",
        Verdict.INCOMPATIBLE,
        ["loads only in litert 1.0.1", "tflite-runtime 2.14.0", "STABLEHLO_ADD"],
    ),
    ("litert only, litert device", LITERT_ONLY, "litert 1.0.5", Verdict.COMPATIBLE, ["litert 1.0.5"]),
    (
        "both load, litert device",
        {"tflite-runtime": TFL, "litert": LITERT},
        "litert 1.0.1",
        Verdict.COMPATIBLE,
        [],
    ),
    (
        "runtime never checked",
        {"tflite-runtime": TFL},
        "litert 1.0.1",
        Verdict.INCOMPATIBLE,
        ["never checked", "litert 1.0.1"],
    ),
    (
        "unknown runtime name",
        {"tflite-runtime": TFL},
        "tensorflow 2.15.0",
        Verdict.INCOMPATIBLE,
        ["tensorflow 2.15.0"],
    ),
    (
        "loads nowhere",
        {"tflite-runtime": TFL_FAILS},
        "tflite-runtime 2.14.0",
        Verdict.INCOMPATIBLE,
        ["no runtime"],
    ),
    (
        "check without a version",
        {"tflite-runtime": RuntimeCheck(loads=True)},
        "tflite-runtime 2.16.1",
        Verdict.COMPATIBLE,
        ["judged on the name"],
    ),
    (
        "device without a version",
        {"tflite-runtime": TFL},
        "tflite-runtime",
        Verdict.COMPATIBLE,
        ["judged on the name"],
    ),
    ("device without a version, wrong name", {"tflite-runtime": TFL}, "litert", Verdict.INCOMPATIBLE, []),
    ("device never reported", {"tflite-runtime": TFL}, None, Verdict.UNCHECKED, ["never reported"]),
    ("device reported blank", {"tflite-runtime": TFL}, "  ", Verdict.UNCHECKED, ["never reported"]),
    ("manifest without checks", {}, "tflite-runtime 2.14.0", Verdict.UNCHECKED, ["no runtime check"]),
    ("nothing on either side", {}, None, Verdict.UNCHECKED, []),
]


@pytest.mark.parametrize(
    ("runtimes", "reported", "verdict", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_rule(
    runtimes: dict[str, RuntimeCheck], reported: str | None, verdict: Verdict, words: list[str]
) -> None:
    result = check(runtimes, reported)
    assert result.verdict is verdict, result.detail
    assert result.allowed is (verdict is not Verdict.INCOMPATIBLE)
    for word in words:
        assert word in result.detail


def test_device_runtime_parse_and_split() -> None:
    assert DeviceRuntime.parse(" litert 1.0.1 ") == DeviceRuntime("litert", "1.0.1")
    assert str(DeviceRuntime.parse("tflite-runtime")) == "tflite-runtime"
    allowed, skipped, unchecked = split(
        LITERT_ONLY, {"a": "litert 1.0.1", "b": "tflite-runtime 2.14.0", "c": None, "d": "litert 1.1.0"}
    )
    assert allowed == ["a", "c"]
    assert [(s.device_id, s.runtime) for s in skipped] == [
        ("b", "tflite-runtime 2.14.0"),
        ("d", "litert 1.1.0"),
    ]
    assert [(u.device_id, u.runtime) for u in unchecked] == [("c", None)]


# ------------------------------------------------------------------ a real fleet over HTTP


def signed_bundle(key: Path, version: str, runtimes: dict[str, RuntimeCheck]) -> bytes:
    files = model_files(version.encode())
    manifest = make_manifest("digits", version, files).model_dump(mode="json")
    manifest["runtimes"] = {name: check.model_dump(mode="json") for name, check in runtimes.items()}
    manifest_bytes = Manifest.model_validate(manifest).model_dump_json().encode()
    return bundle_bytes(manifest_bytes, sign(load_private_key(key), manifest_bytes), files)


def report(device: TestClient, device_id: str, runtime: str | None) -> None:
    status = DeviceStatus(
        device_id=device_id,
        presence=Presence.ONLINE,
        ts=datetime.now(UTC),
        agent_version="0.1.0",
        runtime=runtime,
    )
    device.publish(TOPICS.status(device_id), status.model_dump_json().encode(), retain=True)


def post(fleet: RunningFleet, path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
    response = fleet.post(path, json=body)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def desired_version(fleet: RunningFleet, device_id: str) -> str | None:
    state = parse_message(DesiredState, fleet.get(f"/api/v1/devices/{device_id}/desired").content)
    return None if state.model is None else state.model.version


@pytest.fixture
def mixed_fleet(fleet: RunningFleet, device: TestClient, signing_keys: tuple[Path, Path]) -> RunningFleet:
    """digits 1.0.0 loads in tflite-runtime 2.14, 2.0.0 only in LiteRT; two tflite-runtime devices,
    one LiteRT device and one that never named its runtime."""
    for version, runtimes in (("1.0.0", {"tflite-runtime": TFL}), ("2.0.0", LITERT_ONLY)):
        data = signed_bundle(signing_keys[0], version, runtimes)
        response = fleet.post(
            "/api/v1/models", data=data, headers={"Content-Type": "application/octet-stream"}
        )
        assert response.status_code == 201, response.text
    for device_id, runtime in (
        ("pi-tfl-1", "tflite-runtime 2.14.0"),
        ("pi-tfl-2", "tflite-runtime 2.14.0"),
        ("pi-lrt", "litert 1.0.1"),
        ("pi-new", None),
    ):
        report(device, device_id, runtime)
    wait_for(lambda: len(fleet.json("/api/v1/devices")) == 4)
    return fleet


def test_deploy_refuses_an_incompatible_device_and_skips_it_fleet_wide(
    mixed_fleet: RunningFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = mixed_fleet
    refused = fleet.post(
        "/api/v1/deployments", json={"name": "digits", "version": "2.0.0", "device_id": "pi-tfl-1"}
    )
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    for word in ("digits 2.0.0", "pi-tfl-1", "loads only in litert 1.0.1", "tflite-runtime 2.14.0"):
        assert word in detail
    assert desired_version(fleet, "pi-tfl-1") is None  # nothing was stored

    ok = post(
        fleet, "/api/v1/deployments", {"name": "digits", "version": "1.0.0", "device_id": "pi-tfl-1"}, 200
    )
    assert ok["devices_notified"] == ["pi-tfl-1"] and ok["devices_skipped"] == []
    assert desired_version(fleet, "pi-tfl-1") == "1.0.0"

    # Fleet-wide: the default is set; devices following it that cannot load it are listed and are
    # never handed it (their desired state stays empty); pi-tfl-1 keeps its own assignment.
    wide = post(fleet, "/api/v1/deployments", {"name": "digits", "version": "2.0.0", "device_id": None}, 200)
    assert wide["devices_notified"] == ["pi-lrt", "pi-new"]
    assert [(s["device_id"], s["runtime"]) for s in wide["devices_skipped"]] == [
        ("pi-tfl-2", "tflite-runtime 2.14.0")
    ]
    assert "loads only in litert" in wide["devices_skipped"][0]["reason"]
    assert [u["device_id"] for u in wide["devices_unchecked"]] == ["pi-new"]
    versions = {d: desired_version(fleet, d) for d in ("pi-tfl-1", "pi-tfl-2", "pi-lrt", "pi-new")}
    assert versions == {"pi-tfl-1": "1.0.0", "pi-tfl-2": None, "pi-lrt": "2.0.0", "pi-new": "2.0.0"}

    # The operator CLI prints the 409 as one line and the skipped devices by name.
    url = ("--fleet", fleet.url)
    code = fleet_main(["model", "deploy", "digits", "2.0.0", "--device", "pi-tfl-2", *url])
    out, err = capsys.readouterr()
    assert code == 2 and "409" in err and "pi-tfl-2" in err and "litert 1.0.1" in err
    assert len(err.strip().splitlines()) == 1
    code = fleet_main(["model", "deploy", "digits", "2.0.0", *url])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "skipped (runtime cannot load it): 1 device(s)" in out
    assert "pi-tfl-2 (tflite-runtime 2.14.0): the model loads only in litert" in out
    assert "pi-new (no runtime reported)" in out


def test_rollout_skips_and_lists_incompatible_devices(
    mixed_fleet: RunningFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = mixed_fleet
    body = {"name": "digits", "version": "2.0.0", "target": {"all": True}, "waves": ["1", "100%"]}
    view = post(fleet, "/api/v1/rollouts", body, 201)
    assert view["devices_total"] == 2 and view["waves"] == [1, 2]
    skipped = {s["device_id"]: s for s in view["skipped"]}
    assert sorted(skipped) == ["pi-tfl-1", "pi-tfl-2"]
    assert skipped["pi-tfl-1"]["runtime"] == "tflite-runtime 2.14.0"
    assert "loads only in litert 1.0.1" in skipped["pi-tfl-1"]["reason"]
    # Stored, not recomputed: the same list on every read.
    again = fleet.json(f"/api/v1/rollouts/{view['id']}")
    assert again["skipped"] == view["skipped"]
    assert fleet.json("/api/v1/rollouts")[0]["skipped"] == view["skipped"]
    # Only compatible devices were assigned (wave 1 is one of them).
    assert desired_version(fleet, "pi-tfl-1") is None and desired_version(fleet, "pi-tfl-2") is None

    code = fleet_main(["rollout", "status", str(view["id"]), "--fleet", fleet.url])
    out, _ = capsys.readouterr()
    assert code == 0 and "SKIPPED" in out
    assert "skipped (runtime cannot load it): 2 device(s)" in out
    assert "pi-tfl-2 (tflite-runtime 2.14.0): the model loads only in litert 1.0.1" in out

    # A target where no device can load it is refused, naming them.
    only_tfl = {**body, "target": {"devices": ["pi-tfl-1", "pi-tfl-2"]}}
    refused = fleet.post("/api/v1/rollouts", json=only_tfl)
    assert refused.status_code == 409, refused.text
    assert "no targeted device can run digits 2.0.0" in refused.json()["detail"]
    assert "pi-tfl-1: the model loads only in litert 1.0.1" in refused.json()["detail"]
