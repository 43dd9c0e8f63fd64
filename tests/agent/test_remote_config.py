"""Remote configuration on the agent: checked by the agent.toml types, refused whole when any part
is wrong (the running config stays), remembered across a restart, off with accept_config = false."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import AgentConfig
from agent.remote_config import RemoteConfigError, RemoteConfigs, overlay
from protocol.messages import DesiredState, parse_message
from protocol.remote import ConfigOutcome, RemoteConfig


def local(tmp_path: Path, **extra: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "device_id": "dev-1",
            "state_dir": str(tmp_path),
            "trusted_keys": [str(tmp_path)],
            "fleet": {"url": "http://fleet"},
            "telemetry": {"interval_s": 60},
            **extra,
        }
    )


def test_a_valid_config_overrides_only_its_keys(tmp_path: Path) -> None:
    base = local(tmp_path, update={"probation_s": 30, "max_error_rate": 0.05})
    config = overlay(
        base, {"telemetry": {"interval_s": 5}, "update": {"max_error_rate": 0.2}, "log": {"level": "debug"}}
    )
    assert config.telemetry.interval_s == 5
    assert config.update.max_error_rate == 0.2
    assert config.update.probation_s == 30  # from agent.toml
    assert config.log.level == "debug"
    assert config.fleet == base.fleet and config.mqtt == base.mqtt


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"telemetry": {"interval_s": -1}}, "telemetry.interval_s = -1: Input should be greater than 0"),
        ({"telemetry": {"interval_s": "soon"}}, "telemetry.interval_s = 'soon'"),
        ({"telemetry": {"interval_s": 0.01}}, "remotely it must be within [1, 86400]"),
        (
            {"telemetry": {"window": 5}},
            "telemetry.window: not remotely settable ([telemetry] takes interval_s)",
        ),
        ({"mqtt": {"host": "evil.example"}}, "mqtt: not a remotely settable section"),
        ({"fleet": {"url": "http://evil"}}, "fleet: not a remotely settable section"),
        (
            {"update": {"max_error_rate": 3}},
            "update.max_error_rate = 3: Input should be less than or equal to 1",
        ),
        ({"log": {"level": "chatty"}}, "log.level = 'chatty'"),
    ],
)
def test_a_bad_config_is_refused_with_the_reason(
    tmp_path: Path, settings: dict[str, dict[str, object]], words: str
) -> None:
    with pytest.raises(RemoteConfigError) as refused:
        overlay(local(tmp_path), settings)
    assert words in str(refused.value)


def test_refused_keeps_the_running_config_and_reports_why(tmp_path: Path) -> None:
    base = local(tmp_path)
    state = RemoteConfigs(tmp_path)
    good = RemoteConfig.of({"telemetry": {"interval_s": 10}})
    applied = state.offer(base, good)
    assert applied is not None and applied.telemetry.interval_s == 10
    assert state.report is not None and state.report.outcome == ConfigOutcome.APPLIED
    assert state.report.applied_revision == good.revision

    bad = RemoteConfig.of({"telemetry": {"interval_s": 10}, "update": {"max_error_rate": -1}})
    assert state.offer(base, bad) is None  # nothing to change: the running config stays
    assert state.report is not None and state.report.outcome == ConfigOutcome.REFUSED
    assert state.report.revision == bad.revision
    assert state.report.applied_revision == good.revision
    assert "update.max_error_rate = -1" in (state.report.reason or "")
    assert state.offer(base, bad) is None  # judged once per revision

    # A restart (and agent.toml re-read) comes back with the accepted config, and the report.
    again = RemoteConfigs(tmp_path)
    assert again.effective(base).telemetry.interval_s == 10
    assert again.report == state.report

    # The fleet drops the config: agent.toml alone again.
    back = again.offer(base, None)
    assert back is not None and back.telemetry.interval_s == 60
    assert RemoteConfigs(tmp_path).effective(base).telemetry.interval_s == 60


def test_accept_config_false_refuses_everything(tmp_path: Path) -> None:
    base = local(tmp_path, remote={"accept_config": False})
    state = RemoteConfigs(tmp_path)
    assert state.offer(base, RemoteConfig.of({"telemetry": {"interval_s": 10}})) is None
    assert state.report is not None and state.report.outcome == ConfigOutcome.REFUSED
    assert "accept_config = false" in (state.report.reason or "")


def test_a_damaged_state_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "remote_config.json").write_text("{not json")
    state = RemoteConfigs(tmp_path)
    assert state.accepted is None and state.effective(local(tmp_path)).telemetry.interval_s == 60


def test_the_wire_keeps_a_refusable_config_parsable() -> None:
    """A desired state whose config the agent will refuse must still parse: the model update in
    it goes on."""
    config = RemoteConfig.of({"telemetry": {"interval_s": -5}, "nonsense": {"x": "y"}})
    desired = DesiredState(device_id="dev-1", config=config)
    assert parse_message(DesiredState, desired.model_dump_json().encode()).config == config
    with pytest.raises(ValidationError, match="revision"):
        RemoteConfig(settings={"telemetry": {"interval_s": 5}}, revision="0" * 64)
    with pytest.raises(ValidationError):
        RemoteConfig.of({"telemetry": {"interval_s": {"nested": 1}}})  # type: ignore[dict-item]
