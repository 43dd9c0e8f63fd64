"""Replay/downgrade: a device moves back to an older model only with the operator's signed grant,
or one step back to the model it ran before (what a rollout rollback does)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.store import VersionMarks
from agent.update.downgrade import DowngradeGuard
from converter.keys import generate_key_pair
from edgefleet.cli import main
from edgefleet.mosquitto import MosquittoBroker
from protocol.messages import DesiredModel, DesiredState
from protocol.rollback import RollbackGrant, SignedRollbackGrant, is_older, parse_duration_s, sign_grant
from protocol.schema import ModelRef
from protocol.signing import load_private_key
from tests.fleet.bundles import build_bundle
from tests.support.fleet import RunningFleet, fleet_config, running_fleet

DEVICE = "dev-rollback"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RUNNING = ModelRef(name="digits", version="2.0.0", sha256="b" * 64)
PREVIOUS = "c" * 64


def _target(version: str = "1.0.0", sha: str = "a" * 64, name: str = "digits") -> DesiredModel:
    return DesiredModel(name=name, version=version, sha256=sha, size=1, url="/b")


def _grant(key: Path, **changes: object) -> SignedRollbackGrant:
    fields: dict[str, object] = {
        "name": "digits",
        "version": "1.0.0",
        "devices": [DEVICE],
        "issued_at": NOW - timedelta(hours=1),
        "expires_at": NOW + timedelta(hours=1),
        **changes,
    }
    return sign_grant(load_private_key(key), RollbackGrant.model_validate(fields))


@pytest.fixture
def guard(signing_keys: tuple[Path, Path], tmp_path: Path) -> DowngradeGuard:
    return DowngradeGuard(DEVICE, [signing_keys[1]], VersionMarks(tmp_path / "versions.json"))


def _refusal(guard: DowngradeGuard, target: DesiredModel, grant: SignedRollbackGrant | None) -> str | None:
    return guard.refusal(target, grant, running=RUNNING, previous_sha256=PREVIOUS, now=NOW)


@pytest.mark.parametrize(
    ("a", "b", "older"),
    [
        ("1.0.0", "2.0.0", True),
        ("1.10.0", "1.9.0", False),
        ("2.0.0-rc.1", "2.0.0", True),
        ("2.0.0", "2.0.0-rc.1", False),
        ("2.0.0-rc.2", "2.0.0-rc.10", True),
        ("2.0.0+build.5", "2.0.0", False),
    ],
)
def test_versions_are_ordered_as_semantic_versions(a: str, b: str, older: bool) -> None:
    assert is_older(a, b) is older


def test_moves_that_need_no_grant(
    guard: DowngradeGuard, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    assert _refusal(guard, _target("3.0.0"), None) is None, "an upgrade"
    assert _refusal(guard, _target("1.0.0", name="other"), None) is None, "another model"
    assert _refusal(guard, _target("1.0.0", sha=PREVIOUS), None) is None, (
        "one step back to the previous model"
    )
    fresh = DowngradeGuard(DEVICE, [signing_keys[1]], VersionMarks(tmp_path / "fresh.json"))
    first = fresh.refusal(_target("1.0.0"), None, running=None, previous_sha256=None, now=NOW)
    assert first is None, "a device with no model yet"


def test_an_older_model_without_a_grant_is_refused_in_words(guard: DowngradeGuard) -> None:
    reason = _refusal(guard, _target("1.0.0"), None)
    assert reason is not None
    assert "refusing to move from digits 2.0.0 back to 1.0.0" in reason
    assert "edgefleet model rollback-token" in reason


def test_a_valid_grant_allows_the_move(guard: DowngradeGuard, signing_keys: tuple[Path, Path]) -> None:
    assert _refusal(guard, _target("1.0.0"), _grant(signing_keys[0])) is None
    assert _refusal(guard, _target("1.0.0"), _grant(signing_keys[0], devices=None)) is None


def test_a_grant_that_does_not_cover_the_move_is_refused(
    guard: DowngradeGuard, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key = signing_keys[0]
    stranger = generate_key_pair(tmp_path / "stranger").private_path
    good = _grant(key)
    cases = {
        "expired at": _grant(key, expires_at=NOW - timedelta(seconds=1)),
        "does not name device dev-rollback": _grant(key, devices=["dev-other"]),
        "is for digits 1.5.0, not digits 1.0.0": _grant(key, version="1.5.0"),
        "is for another bundle": _grant(key, sha256="d" * 64),
        "which is not trusted here": _grant(stranger),
        "signature does not check out": good.model_copy(
            update={"grant": good.grant.replace("1.0.0", "0.9.0")}
        ),
        "issued in the future": _grant(key, issued_at=NOW + timedelta(hours=1)),
    }
    for expected, grant in cases.items():
        reason = _refusal(guard, _target("1.0.0"), grant)
        assert reason is not None and expected in reason, (expected, reason)


def _at(guard: DowngradeGuard, target: DesiredModel, running: ModelRef, previous: str | None) -> str | None:
    return guard.refusal(target, None, running=running, previous_sha256=previous, now=NOW)


def test_a_replay_after_a_detour_through_another_model_is_refused(
    guard: DowngradeGuard, signing_keys: tuple[Path, Path]
) -> None:
    """digits 2.0.0 -> other 1.0.0 (allowed) -> digits 1.0.0: below the digits mark, needs a grant."""
    other = ModelRef(name="other", version="1.0.0", sha256="e" * 64)
    assert _at(guard, _target("1.0.0", name="other", sha=other.sha256 or ""), RUNNING, PREVIOUS) is None
    reason = _at(guard, _target("1.0.0"), other, RUNNING.sha256)
    assert reason is not None and "this device has committed digits 2.0.0" in reason
    assert _at(guard, _target("2.0.0", sha=RUNNING.sha256 or ""), other, RUNNING.sha256) is None, (
        "back to the newest digits is no downgrade"
    )
    granted = guard.refusal(
        _target("1.0.0"), _grant(signing_keys[0]), running=other, previous_sha256=None, now=NOW
    )
    assert granted is None


def test_the_step_back_is_spent_once_the_device_ran_below_its_mark(
    guard: DowngradeGuard, signing_keys: tuple[Path, Path]
) -> None:
    """The toggle: 2.0.0 -> 1.0.0 (the free step back) -> 2.0.0 -> 1.0.0 needs a grant."""
    v1 = ModelRef(name="digits", version="1.0.0", sha256=PREVIOUS)
    assert _at(guard, _target("1.0.0", sha=PREVIOUS), RUNNING, PREVIOUS) is None
    # Running 1.0.0 now (seen at the next check), then forward to 2.0.0 again: allowed.
    assert _at(guard, _target("2.0.0", sha=RUNNING.sha256 or ""), v1, RUNNING.sha256) is None
    reason = _at(guard, _target("1.0.0", sha=PREVIOUS), RUNNING, PREVIOUS)
    assert reason is not None and "was taken already" in reason
    granted = guard.refusal(
        _target("1.0.0", sha=PREVIOUS),
        _grant(signing_keys[0]),
        running=RUNNING,
        previous_sha256=PREVIOUS,
        now=NOW,
    )
    assert granted is None
    # Only from the mark itself: two steps down, the previous bundle is no free step either.
    v0 = ModelRef(name="digits", version="0.9.0", sha256="f" * 64)
    assert _at(guard, _target("1.0.0", sha=PREVIOUS), v0, PREVIOUS) is not None


def test_the_marks_survive_a_restart_and_a_damaged_file_falls_back_to_the_running_model(
    guard: DowngradeGuard, signing_keys: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert _at(guard, _target("3.0.0", sha="d" * 64), RUNNING, PREVIOUS) is None  # records digits 2.0.0
    again = DowngradeGuard(DEVICE, [signing_keys[1]], VersionMarks(tmp_path / "versions.json"))
    other = ModelRef(name="other", version="1.0.0", sha256="e" * 64)
    assert _at(again, _target("1.0.0"), other, None) is not None, "the mark is on disk"

    (tmp_path / "versions.json").write_text("{not json")
    assert _at(again, _target("1.0.0"), RUNNING, None) is not None, "the running model still guards"
    assert "versions.json is unreadable or corrupt" in caplog.text
    assert _at(again, _target("1.0.0"), other, None) is not None, "and the file is written again"


@pytest.mark.parametrize("key_id", ["0123456789abcdef\n", "0123456789abcdef0", "0123456789ABCDEF"])
def test_a_key_id_must_be_exactly_16_hex_digits(key_id: str, signing_keys: tuple[Path, Path]) -> None:
    signed = _grant(signing_keys[0]).model_dump()
    signed["signature"]["key_id"] = key_id
    with pytest.raises(ValueError, match="16 hex digits"):
        SignedRollbackGrant.model_validate(signed)


def test_a_duration_must_be_a_number_and_a_unit() -> None:
    assert parse_duration_s("24h") == 86_400
    for bad in ("24h\n1d", "0h", "h", "24 h"):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration_s(bad)


@pytest.fixture
def fleet(tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]) -> Iterator[RunningFleet]:
    with running_fleet(fleet_config(tmp_path, broker, signing_keys)) as running:
        yield running


def test_the_fleet_keeps_a_grant_and_serves_it_to_the_devices_it_names(
    fleet: RunningFleet, signing_keys: tuple[Path, Path], tmp_path: Path, guard: DowngradeGuard
) -> None:
    bundle = build_bundle(signing_keys[0], "digits", "1.0.0")
    headers = {"Content-Type": "application/octet-stream"}
    assert fleet.post("/api/v1/models", data=bundle, headers=headers).status_code == 201
    assert fleet.post("/api/v1/deployments", json={"name": "digits", "version": "1.0.0"}).status_code == 200

    argv = ["model", "rollback-token", "digits", "1.0.0", "--device", DEVICE, "--key", str(signing_keys[0])]
    assert main([*argv, "--expires", "2h", "--fleet", fleet.url]) == 0

    desired = DesiredState.model_validate(fleet.json(f"/api/v1/devices/{DEVICE}/desired"))
    assert desired.model is not None and desired.rollback_grant is not None
    assert desired.model.sha256 == hashlib.sha256(bundle).hexdigest()
    now = datetime.now(UTC)
    allowed = guard.refusal(
        desired.model, desired.rollback_grant, running=RUNNING, previous_sha256=None, now=now
    )
    assert allowed is None
    other = DesiredState.model_validate(fleet.json("/api/v1/devices/dev-other/desired"))
    assert other.model is not None and other.rollback_grant is None, (
        "a grant only reaches the devices it names"
    )

    stranger = generate_key_pair(tmp_path / "stranger").private_path
    forged = _grant(stranger, issued_at=now, expires_at=now + timedelta(hours=1))
    refused = fleet.post("/api/v1/models/digits/1.0.0/rollback-grants", json=forged.model_dump(mode="json"))
    assert refused.status_code == 400 and "not trusted here" in refused.json()["detail"]
    unknown = fleet.post("/api/v1/models/digits/9.9.9/rollback-grants", json=forged.model_dump(mode="json"))
    assert unknown.status_code == 404
